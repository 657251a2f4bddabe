"""The CgroupManager the services code against, and the factory that picks its driver."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Protocol

from pycri.cgroups.cgroupfs import CgroupfsManager
from pycri.cgroups.details import CgroupDetails
from pycri.cgroups.layout import CgroupLayout, host_layout
from pycri.cgroups.limits import CgroupLimits
from pycri.cgroups.systemd import SystemdBus, SystemdManager
from pycri.cgroups.usage import CgroupStats

DRIVERS = ("cgroupfs", "systemd")


class CgroupManager(Protocol):
    """Where pods, containers and conmon go in the cgroup tree under one driver, and the reading
    and removal of those cgroups. Paths are a driver's OCI cgroupsPath (or a pod parent)."""

    driver: str  # "cgroupfs" | "systemd"
    layout: CgroupLayout
    parent: str  # runtime.cgroup_parent in this driver's form: "/pycri" or "pycri.slice"

    def check_parent(self, parent: str) -> None:
        """ValueError(msg) for a pod parent this driver cannot take."""

    def pod_parent(self, kubelet_parent: str, sandbox_id: str) -> str:
        """Kubelet's parent when non-empty, else pycri's own per-pod cgroup under the configured parent."""

    def owns_pod_parent(self, parent: str) -> bool:
        """True when pycri made this pod parent (so pycri removes it)."""

    def create_pod_parent(self, parent: str) -> None:
        """Make pycri's own pod parent where the driver needs it before runc (blocking; idempotent)."""

    def container_path(self, parent: str, leaf: str) -> str:
        """The OCI linux.cgroupsPath of a leaf (container or pause id) under the pod parent."""

    def directory(self, cgroups_path: str) -> PurePosixPath:
        """The cgroup's directory below the hierarchy roots; ValueError for a path this driver cannot take."""

    def place_conmon(self, parent: str, container_id: str, pid: int) -> None:
        """Move conmon into its own cgroup (blocking)."""

    def exists(self, cgroups_path: str) -> bool: ...

    def read_stats(self, cgroups_path: str) -> CgroupStats:
        """FileNotFoundError when the cgroup is absent (blocking)."""

    def read_details(self, cgroups_path: str) -> CgroupDetails:
        """FileNotFoundError when the cgroup is absent (blocking)."""

    def set_limits(self, cgroups_path: str, limits: CgroupLimits) -> list[str]:
        """Make the cgroup where missing and give it these limits, all or none, in every hierarchy
        (blocking; for a cgroup pycri owns: runc sets a container's). LimitError names a setting
        the kernel refused; returns the settings given that the host has no controller for."""

    async def remove(self, cgroups_path: str) -> None:
        """The cgroup and everything below it in every hierarchy; no error when gone; OSError(EBUSY)
        when processes remain."""

    def children(self, parent: str) -> list[str]:
        """Leaf names directly below a parent, such that container_path(parent, leaf) names each."""


def make_cgroup_manager(
    driver: str,
    parent: str,
    conmon_cgroup: str,
    layout: CgroupLayout | None = None,
    systemd: SystemdBus | None = None,
) -> CgroupManager:
    """The manager for runtime.cgroup_driver, runtime.cgroup_parent and runtime.conmon_cgroup;
    ValueError for settings the driver cannot take. `layout` defaults to the host's mounts and
    `systemd` to the system bus."""
    layout = layout or host_layout()
    if driver == "cgroupfs":
        return CgroupfsManager(parent, conmon_cgroup, layout)
    if driver == "systemd":
        if systemd is None:
            from pycri.cgroups.dbus import SystemdDbus  # jeepney is needed only with this driver

            systemd = SystemdDbus()
        return SystemdManager(parent, conmon_cgroup, layout, systemd)
    raise ValueError(f"cgroup driver {driver!r} is not one of {', '.join(DRIVERS)}")

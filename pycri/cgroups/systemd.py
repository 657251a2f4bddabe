"""The systemd driver: a cgroupsPath is "<slice>:<prefix>:<name>" (runc makes the transient scope
"<prefix>-<name>.scope" in that slice) and a pod's parent is a slice name whose dashes give its
place in the tree ("kubepods-burstable-pod1.slice" is
kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice). The units pycri makes
itself, its own pod slices and conmon's scopes, are started and stopped through systemd's D-Bus API.
"""

from __future__ import annotations

import asyncio
import errno
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from pycri.cgroups import tree
from pycri.cgroups.cgroupfs import CONMON_IN_POD, check_leaf
from pycri.cgroups.layout import CgroupLayout

SLICE_SUFFIX = ".slice"
SCOPE_SUFFIX = ".scope"
ROOT_SLICE = "-.slice"
UNIT_PREFIX = "pycri"
DEFAULT_SLICE = "system.slice"  # runc's choice for a cgroupsPath with an empty slice
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
# systemd's unit name alphabet, without the "@" of template instances (no slice or scope of ours is one).
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+")


class SystemdError(OSError):
    """systemd refused a call or its job did not finish as "done"; `dbus_error` names a D-Bus error."""

    def __init__(self, message: str, dbus_error: str = "") -> None:
        super().__init__(errno.EIO, message)
        self.dbus_error = dbus_error


@dataclass(frozen=True)
class TransientUnit:
    """A slice or scope for StartTransientUnit; a scope takes `pids` into its cgroup."""

    name: str
    slice: str
    description: str
    pids: tuple[int, ...] = ()


class SystemdBus(Protocol):
    """The two calls pycri makes on org.freedesktop.systemd1.Manager; both wait for the job."""

    def start_transient_unit(self, unit: TransientUnit) -> None: ...  # SystemdError(UNIT_EXISTS) when loaded

    def stop_unit(self, name: str) -> None: ...  # no error when no such unit is loaded


def expand_slice(name: str) -> PurePosixPath:
    """The directory of a slice below the hierarchy roots; ValueError for a name that is not a slice."""
    if not name.endswith(SLICE_SUFFIX) or name == SLICE_SUFFIX or not _UNIT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a systemd slice name")
    if name == ROOT_SLICE:
        return PurePosixPath()
    components = name.removesuffix(SLICE_SUFFIX).split("-")
    if "" in components:
        raise ValueError(f"{name!r} is not a systemd slice name (empty part between dashes)")
    return PurePosixPath(*("-".join(components[: depth + 1]) + SLICE_SUFFIX for depth in range(len(components))))


def slice_of(parent: str) -> str:
    """runtime.cgroup_parent as a slice: "pycri.slice" as it is, "/pycri" (a cgroupfs-style path) as "pycri.slice"."""
    if parent.endswith(SLICE_SUFFIX):
        expand_slice(parent)
        return parent
    stem = parent.strip("/").replace("/", "-")
    name = f"{stem}{SLICE_SUFFIX}" if stem else f"{UNIT_PREFIX}{SLICE_SUFFIX}"
    expand_slice(name)
    return name


def split_cgroups_path(cgroups_path: str) -> tuple[str, str]:
    """(slice, unit) of a "<slice>:<prefix>:<name>" cgroupsPath: the unit is "<prefix>-<name>.scope",
    or <name> itself when that is a slice. A bare slice name is its own unit."""
    if ":" not in cgroups_path:
        expand_slice(cgroups_path)
        return cgroups_path, cgroups_path
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise ValueError(f"{cgroups_path!r} is not a systemd cgroupsPath (<slice>:<prefix>:<name>)")
    slice_name, prefix, name = parts
    slice_name = slice_name or DEFAULT_SLICE
    expand_slice(slice_name)
    if name.endswith(SLICE_SUFFIX):
        expand_slice(name)
        return slice_name, name
    unit = f"{prefix}-{name}{SCOPE_SUFFIX}" if prefix else f"{name}{SCOPE_SUFFIX}"
    if not name or not _UNIT_NAME.fullmatch(unit):
        raise ValueError(f"{cgroups_path!r} names no valid scope")
    return slice_name, unit


def systemd_directory(cgroups_path: str) -> PurePosixPath:
    """The directory below the hierarchy roots of a cgroupsPath or of a bare slice name."""
    if ":" not in cgroups_path:
        return expand_slice(cgroups_path)
    slice_name, unit = split_cgroups_path(cgroups_path)
    return expand_slice(slice_name) / unit


class SystemdManager(tree.DirectoryOperations):
    driver = "systemd"

    def __init__(self, parent: str, conmon_cgroup: str, layout: CgroupLayout, bus: SystemdBus) -> None:
        self.layout = layout
        self._slice = slice_of(parent)
        self.parent = self._slice
        if conmon_cgroup != CONMON_IN_POD:
            expand_slice(conmon_cgroup)
        self._conmon_cgroup = conmon_cgroup
        self._bus = bus

    def check_parent(self, parent: str) -> None:
        expand_slice(parent)

    def pod_parent(self, kubelet_parent: str, sandbox_id: str) -> str:
        if kubelet_parent:
            return kubelet_parent
        check_leaf(sandbox_id)
        return self._own_pod_slice(sandbox_id)

    def owns_pod_parent(self, parent: str) -> bool:
        stem = self._slice.removesuffix(SLICE_SUFFIX)
        if self._slice == ROOT_SLICE or not parent.startswith(f"{stem}-pod") or not parent.endswith(SLICE_SUFFIX):
            return False
        sandbox_id = parent.removeprefix(f"{stem}-pod").removesuffix(SLICE_SUFFIX)
        return "-" not in sandbox_id and parent == self._own_pod_slice(sandbox_id)

    def _own_pod_slice(self, sandbox_id: str) -> str:
        stem = "" if self._slice == ROOT_SLICE else f"{self._slice.removesuffix(SLICE_SUFFIX)}-"
        return f"{stem}pod{sandbox_id}{SLICE_SUFFIX}"

    def container_path(self, parent: str, leaf: str) -> str:
        expand_slice(parent)
        check_leaf(leaf)
        return f"{parent}:{UNIT_PREFIX}:{leaf}"

    def directory(self, cgroups_path: str) -> PurePosixPath:
        return systemd_directory(cgroups_path)

    def create_pod_parent(self, parent: str) -> None:
        """Start pycri's own pod slice (kubelet's slices are kubelet's); no error when it is running."""
        if not self.owns_pod_parent(parent):
            return
        try:
            self._bus.start_transient_unit(TransientUnit(name=parent, slice="", description=f"pycri pod {parent}"))
        except SystemdError as error:
            if error.dbus_error != UNIT_EXISTS:
                raise

    def place_conmon(self, parent: str, container_id: str, pid: int) -> None:
        check_leaf(container_id)
        slice_name = parent if self._conmon_cgroup == CONMON_IN_POD else self._conmon_cgroup
        expand_slice(slice_name)
        scope = f"{UNIT_PREFIX}-conmon-{container_id}{SCOPE_SUFFIX}"
        self._bus.start_transient_unit(
            TransientUnit(name=scope, slice=slice_name, description=f"pycri conmon {container_id}", pids=(pid,))
        )

    async def remove(self, cgroups_path: str) -> None:
        """Stop the unit (systemd removes the cgroups it made) and remove what is left in the
        hierarchies systemd does not manage. Stopping a unit kills what runs in it, so a cgroup
        that still holds processes is refused first with EBUSY, as cgroupfs would."""
        directory = self.directory(cgroups_path)
        _, unit = split_cgroups_path(cgroups_path)
        if await asyncio.to_thread(tree.has_processes, self.layout, directory):
            raise OSError(errno.EBUSY, "processes remain in the cgroup", cgroups_path)
        await asyncio.to_thread(self._bus.stop_unit, unit)
        await tree.remove(self.layout, directory)

    def children(self, parent: str) -> list[str]:
        """Child slices by name, and scopes pycri's prefix names ("pycri-<leaf>.scope") by leaf: what
        container_path(parent, name) turns back into their cgroupsPath."""
        prefix = f"{UNIT_PREFIX}-"
        found = []
        for name in tree.subdirectories(self.layout, self.directory(parent)):
            if name.endswith(SLICE_SUFFIX):
                found.append(name)
            elif name.startswith(prefix) and name.endswith(SCOPE_SUFFIX):
                found.append(name.removeprefix(prefix).removesuffix(SCOPE_SUFFIX))
        return sorted(found)

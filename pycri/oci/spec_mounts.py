"""Mounts of a container: the system filesystems, the pod's files, the CRI mounts; masked and read-only paths."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycri.api import api_pb2
from pycri.oci.spec_errors import SpecError

if TYPE_CHECKING:
    from pycri.oci.spec import SandboxPaths

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_PROPAGATION_OPTION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}

# Mount.mount_options a bind mount takes (KEP-5855 allows noexec, nodev and nosuid; their
# opposites are the defaults, accepted so that a request naming both is a conflict, not a guess).
_BIND_MOUNT_OPTION_OPPOSITES = {"noexec": "exec", "nodev": "dev", "nosuid": "suid"}
_BIND_MOUNT_OPTION_OPPOSITES.update({value: key for key, value in _BIND_MOUNT_OPTION_OPPOSITES.items()})
_READONLY_OPTIONS = ("ro", "rw", "rro")


def system_mounts(privileged: bool) -> list[dict[str, Any]]:
    """proc, /dev and its pseudo-filesystems, sysfs and the cgroup tree; the last two writable only when privileged."""
    mode = "rw" if privileged else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", mode]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", mode],
        },
    ]


def _pod_file_mounts(files: SandboxPaths, readonly_rootfs: bool) -> list[api_pb2.Mount]:
    """The pod's files as CRI mounts, so that they sort and override like the kubelet's own."""
    return [
        api_pb2.Mount(container_path="/etc/hostname", host_path=str(files.hostname), readonly=readonly_rootfs),
        api_pb2.Mount(container_path="/etc/hosts", host_path=str(files.hosts), readonly=readonly_rootfs),
        api_pb2.Mount(container_path="/etc/resolv.conf", host_path=str(files.resolv_conf), readonly=readonly_rootfs),
        api_pb2.Mount(container_path="/dev/shm", host_path=str(files.shm)),
    ]


def _mount_point_of(path: str, mountinfo: Path) -> tuple[str, list[str]] | None:
    """The mount point holding `path` and its optional fields ("shared:N", "master:N"), from a mountinfo file."""
    best: tuple[str, list[str]] | None = None
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[6 : fields.index("-")])
    return best


def _check_propagation(mount: api_pb2.Mount, mountinfo: Path, field: str) -> None:
    """runc cannot make a mount shared or slave to the host unless its source mount is shared (or a slave)."""
    if mount.propagation == api_pb2.PROPAGATION_PRIVATE:
        return
    source = os.path.realpath(mount.host_path)
    found = _mount_point_of(source, mountinfo)
    optional = found[1] if found else []
    shared = any(item.startswith("shared:") for item in optional)
    slave = any(item.startswith("master:") for item in optional)
    if mount.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL and not shared:
        raise SpecError(f"{field}.propagation: {mount.host_path!r} is not on a shared mount")
    if not (shared or slave):
        raise SpecError(f"{field}.propagation: {mount.host_path!r} is on neither a shared nor a slave mount")


def _check_path(path: str, field: str) -> None:
    # runc would only fail later (an UNKNOWN to the caller), and a relative host path would be
    # resolved against the daemon's working directory when a missing source is created.
    if not path:
        raise SpecError(f"{field}: empty")
    if "\0" in path:
        raise SpecError(f"{field}: {path!r} holds a NUL character")
    if not path.startswith("/"):
        raise SpecError(f"{field}: {path!r} is not absolute")


def bind_mount_options(options: Iterable[str], field: str) -> list[str]:
    """Mount.mount_options, checked: each once, in the order given. SpecError names an option
    that is unknown, read-only-ness (the readonly fields say that) or at odds with another."""
    chosen: list[str] = []
    for number, option in enumerate(options):
        name = f"{field}.mount_options[{number}]"
        if option in _READONLY_OPTIONS:
            raise SpecError(f"{name}: {option!r}: set readonly or recursive_read_only instead")
        if option not in _BIND_MOUNT_OPTION_OPPOSITES:
            known = ", ".join(sorted(_BIND_MOUNT_OPTION_OPPOSITES))
            raise SpecError(f"{name}: {option!r} is not a bind mount option pycri takes ({known})")
        opposite = _BIND_MOUNT_OPTION_OPPOSITES[option]
        if opposite in chosen:
            raise SpecError(f"{name}: {option!r} conflicts with {opposite!r}")
        if option not in chosen:
            chosen.append(option)
    return chosen


def _bind_mount(mount: api_pb2.Mount, field: str) -> dict[str, Any]:
    _check_path(mount.container_path, f"{field}.container_path")
    if mount.image.image:
        # The container service turns image volumes into binds before the spec is built.
        raise SpecError(f"{field}.image: image volumes must be mounted by the container service first")
    _check_path(mount.host_path, f"{field}.host_path")
    if mount.uidMappings or mount.gidMappings:
        # The container service stages them (pycri.userns.mounts) before the spec is built.
        raise SpecError(f"{field}: ID-mapped mounts must be made by the container service first")
    if mount.propagation not in _PROPAGATION_OPTION:
        raise SpecError(f"{field}.propagation: unknown value {mount.propagation}")
    options = ["rbind", _PROPAGATION_OPTION[mount.propagation]]
    if mount.recursive_read_only:
        if not mount.readonly:
            raise SpecError(f"{field}.recursive_read_only: needs readonly")
        if mount.propagation != api_pb2.PROPAGATION_PRIVATE:
            raise SpecError(f"{field}.recursive_read_only: needs private propagation")
        options.append("rro")
    else:
        options.append("ro" if mount.readonly else "rw")
    options.extend(bind_mount_options(mount.mount_options, field))
    return {"destination": mount.container_path, "type": "bind", "source": mount.host_path, "options": options}


def _depth(path: str) -> int:
    return len([part for part in posixpath.normpath(path).split("/") if part])


def container_mounts(
    cri_mounts: Iterable[api_pb2.Mount],
    files: SandboxPaths,
    *,
    privileged: bool,
    readonly_rootfs: bool,
    mountinfo: Path,
) -> tuple[list[dict[str, Any]], str | None]:
    """The spec's mounts and the rootfs propagation they need ("rshared", "rslave" or None).

    CRI mounts replace the pod's files and the system mounts at the same destination (a CRI /dev
    replaces everything under /dev too); bind mounts are ordered parents first, like containerd does.
    """
    cri_list = list(cri_mounts)
    cri_destinations = {posixpath.normpath(mount.container_path) for mount in cri_list}
    binds: list[tuple[api_pb2.Mount, str]] = [(mount, f"mounts[{number}]") for number, mount in enumerate(cri_list)]
    binds.extend(
        (mount, f"pod file {mount.container_path}")
        for mount in _pod_file_mounts(files, readonly_rootfs)
        if mount.container_path not in cri_destinations
    )
    binds.sort(key=lambda item: _depth(item[0].container_path))

    bind_destinations = {posixpath.normpath(mount.container_path) for mount, _ in binds}
    mounts = [
        mount
        for mount in system_mounts(privileged)
        if mount["destination"] not in bind_destinations
        and not ("/dev" in bind_destinations and mount["destination"].startswith("/dev/"))
    ]
    propagation: str | None = None
    for mount, field in binds:
        mounts.append(_bind_mount(mount, field))
        _check_propagation(mount, mountinfo, field)
        if mount.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL:
            propagation = "rshared"
        elif mount.propagation == api_pb2.PROPAGATION_HOST_TO_CONTAINER and propagation is None:
            propagation = "rslave"
    return mounts, propagation


def missing_bind_sources(config: api_pb2.ContainerConfig) -> list[Path]:
    """Host paths of the CRI bind mounts that do not exist yet.

    containerd creates these as directories before the container starts; the container service
    does the same with this list (and removes what it made if creation fails later). SpecError
    for a host path that is not absolute, before anything is made.
    """
    missing = []
    for number, mount in enumerate(config.mounts):
        if mount.image.image:
            continue
        _check_path(mount.host_path, f"mounts[{number}].host_path")
        if not os.path.lexists(mount.host_path):
            missing.append(Path(mount.host_path))
    return missing


def masked_and_readonly_paths(
    context: api_pb2.LinuxContainerSecurityContext,
) -> tuple[list[str], list[str]]:
    """The CRI lists when given, the defaults otherwise; none for a privileged container."""
    if context.privileged:
        return [], []
    masked = list(context.masked_paths) or list(DEFAULT_MASKED_PATHS)
    readonly = list(context.readonly_paths) or list(DEFAULT_READONLY_PATHS)
    return masked, readonly

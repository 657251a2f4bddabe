"""Where the cgroup hierarchies are mounted, from /proc/self/mountinfo.

The host is v2 only when no v1 controller is mounted: a hybrid host (v1 controllers plus a
cgroup2 at /sys/fs/cgroup/unified) is treated as v1, as runc does; runc still creates each
cgroup in that cgroup2 too, so creation, joining and removal cover it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

V1_CONTROLLERS = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "debug", "devices", "freezer", "hugetlb",
        "memory", "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
    }
)  # fmt: skip


@dataclass(frozen=True)
class CgroupLayout:
    """Where the hierarchies are mounted: `unified` on a pure v2 host, else `v1`
    maps each hierarchy ("memory", "cpu", "name=systemd", ...) to its mount point
    and `hybrid_unified` is the cgroup2 mounted beside them, if any."""

    unified: Path | None = None
    v1: dict[str, Path] = field(default_factory=dict)
    hybrid_unified: Path | None = None

    def hierarchy_mounts(self) -> list[Path]:
        if self.unified is not None:
            return [self.unified]
        hybrid = [self.hybrid_unified] if self.hybrid_unified is not None else []
        return list(dict.fromkeys([*self.v1.values(), *hybrid]))

    def hierarchy_dirs(self, directory: PurePosixPath) -> list[Path]:
        """The cgroup's directory in every hierarchy (one directory on v2); `directory` is
        relative to the hierarchy roots, as a manager's `directory()` gives it."""
        if directory.is_absolute() or ".." in directory.parts:
            raise ValueError(f"cgroup directory must be relative and without '..': {str(directory)!r}")
        return [mount / directory for mount in self.hierarchy_mounts()]


def parse_mountinfo(text: str) -> CgroupLayout:
    """The cgroup layout described by /proc/self/mountinfo."""
    v1: dict[str, Path] = {}
    unified: list[Path] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if separator < 5 or len(fields) < separator + 4:
            continue
        mount_point = Path(_unescape_mountinfo(fields[4]))
        fs_type, super_options = fields[separator + 1], fields[separator + 3].split(",")
        if fs_type == "cgroup2":
            unified.append(mount_point)
        elif fs_type == "cgroup":
            for option in super_options:
                if option in V1_CONTROLLERS or option.startswith("name="):
                    v1.setdefault(option, mount_point)
    shallowest_unified = min(unified, key=lambda path: len(path.parts)) if unified else None
    if any(not name.startswith("name=") for name in v1) or shallowest_unified is None:
        return CgroupLayout(v1=v1, hybrid_unified=shallowest_unified)
    return CgroupLayout(unified=shallowest_unified)


@functools.cache
def host_layout() -> CgroupLayout:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _unescape_mountinfo(value: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), value)

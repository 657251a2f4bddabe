"""cgroup v1 and v2 readers for one container's or pod's cgroup (cgroupfs paths).

A cgroup is named by its path below the hierarchy roots, the `cgroupsPath` of
an OCI spec under the cgroupfs driver (e.g. "/pycri/pod-x/ctr-y"). The host is
v2 only when no v1 controller is mounted: a hybrid host (v1 controllers plus a
cgroup2 at /sys/fs/cgroup/unified) is treated as v1, as runc does; runc still
creates each cgroup in that cgroup2 too, so removal covers it.
"""

import asyncio
import errno
import functools
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

V1_CONTROLLERS = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "debug", "devices", "freezer", "hugetlb",
        "memory", "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
    }
)  # fmt: skip
# A limit this large is the kernel's "no limit" (v1 prints PAGE_COUNTER_MAX pages in bytes).
UNLIMITED_THRESHOLD = 1 << 62
REMOVE_ATTEMPTS = 6


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

    def hierarchy_dirs(self, cgroup_path: str) -> list[Path]:
        """The cgroup's directory in every hierarchy (one directory on v2)."""
        relative = relative_path(cgroup_path)
        return [mount / relative for mount in self.hierarchy_mounts()]


@dataclass(frozen=True)
class CgroupStats:
    timestamp_ns: int
    cpu_usage_ns: int
    memory_usage: int
    memory_working_set: int  # usage minus inactive file pages, as kubelet computes it
    memory_rss: int
    memory_limit: int | None  # None when unlimited
    page_faults: int
    major_page_faults: int
    pids: int


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


def parse_int(text: str) -> int:
    """A single-number cgroup file ("" or "max" read as 0)."""
    value = text.strip()
    return int(value) if value and value != "max" else 0


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed file such as memory.stat or cpu.stat ("key value" lines)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"-?[0-9]+", parts[1]):
            values[parts[0]] = int(parts[1])
    return values


def parse_limit(text: str) -> int | None:
    value = text.strip()
    if not value or value == "max":
        return None
    limit = int(value)
    return None if limit >= UNLIMITED_THRESHOLD else limit


def working_set(usage: int, inactive_file: int) -> int:
    return max(usage - inactive_file, 0)


def stats_v1(
    *, cpuacct_usage: str, memory_usage: str, memory_limit: str, memory_stat: str, pids_current: str, timestamp_ns: int
) -> CgroupStats:
    """Stats from v1 file contents ("" for a file that is absent); totals are hierarchical."""
    stat = parse_keyed(memory_stat)
    usage = parse_int(memory_usage)

    def total(key: str) -> int:
        return stat.get(f"total_{key}", stat.get(key, 0))

    return CgroupStats(
        timestamp_ns=timestamp_ns,
        cpu_usage_ns=parse_int(cpuacct_usage),
        memory_usage=usage,
        memory_working_set=working_set(usage, total("inactive_file")),
        memory_rss=total("rss"),
        memory_limit=parse_limit(memory_limit),
        page_faults=total("pgfault"),
        major_page_faults=total("pgmajfault"),
        pids=parse_int(pids_current),
    )


def stats_v2(
    *, cpu_stat: str, memory_current: str, memory_max: str, memory_stat: str, pids_current: str, timestamp_ns: int
) -> CgroupStats:
    """Stats from v2 file contents ("" for a file that is absent)."""
    stat = parse_keyed(memory_stat)
    usage = parse_int(memory_current)
    return CgroupStats(
        timestamp_ns=timestamp_ns,
        cpu_usage_ns=parse_keyed(cpu_stat).get("usage_usec", 0) * 1000,
        memory_usage=usage,
        memory_working_set=working_set(usage, stat.get("inactive_file", 0)),
        memory_rss=stat.get("anon", 0),
        memory_limit=parse_limit(memory_max),
        page_faults=stat.get("pgfault", 0),
        major_page_faults=stat.get("pgmajfault", 0),
        pids=parse_int(pids_current),
    )


def read_stats(cgroup_path: str, layout: CgroupLayout | None = None) -> CgroupStats:
    """Read a cgroup's stats; FileNotFoundError when the cgroup does not exist."""
    layout = layout or host_layout()
    relative = relative_path(cgroup_path)
    timestamp_ns = time.time_ns()
    if layout.unified is not None:
        directory = layout.unified / relative
        if not directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(directory))
        return stats_v2(
            cpu_stat=read_optional(directory / "cpu.stat"),
            memory_current=read_optional(directory / "memory.current"),
            memory_max=read_optional(directory / "memory.max"),
            memory_stat=read_optional(directory / "memory.stat"),
            pids_current=read_optional(directory / "pids.current"),
            timestamp_ns=timestamp_ns,
        )
    memory = _v1_dir(layout, "memory", relative)
    if memory is None or not memory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such memory cgroup", str(memory or cgroup_path))
    cpuacct = _v1_dir(layout, "cpuacct", relative)
    pids = _v1_dir(layout, "pids", relative)
    return stats_v1(
        cpuacct_usage=read_optional(cpuacct / "cpuacct.usage") if cpuacct else "",
        memory_usage=read_optional(memory / "memory.usage_in_bytes"),
        memory_limit=read_optional(memory / "memory.limit_in_bytes"),
        memory_stat=read_optional(memory / "memory.stat"),
        pids_current=read_optional(pids / "pids.current") if pids else "",
        timestamp_ns=timestamp_ns,
    )


def cgroup_exists(cgroup_path: str, layout: CgroupLayout | None = None) -> bool:
    return any(directory.is_dir() for directory in (layout or host_layout()).hierarchy_dirs(cgroup_path))


def join_cgroup(cgroup_path: str, pid: int, layout: CgroupLayout | None = None) -> None:
    """Create the cgroup where missing and move a process into it. On v1 the cpuset
    hierarchy is left alone (a new cpuset needs cpus and mems before it takes tasks)."""
    layout = layout or host_layout()
    relative = relative_path(cgroup_path)
    cpuset = layout.v1.get("cpuset")
    for mount in layout.hierarchy_mounts():
        if mount == cpuset:
            continue
        directory = mount / relative
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").write_text(str(pid))


async def remove_cgroup(cgroup_path: str, layout: CgroupLayout | None = None) -> None:
    """Remove a cgroup and the cgroups below it in every hierarchy. No error when it
    is already gone; OSError (EBUSY) when processes are still inside."""
    for directory in (layout or host_layout()).hierarchy_dirs(cgroup_path):
        if not directory.is_dir():
            continue
        children = [Path(parent) for parent, _, _ in os.walk(directory, topdown=False)]
        for child in children:
            await _rmdir_retrying(child)


async def _rmdir_retrying(directory: Path) -> None:
    # A cgroup whose last task just exited can report EBUSY for a moment.
    for attempt in range(REMOVE_ATTEMPTS):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or attempt == REMOVE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * 2**attempt)


def relative_path(cgroup_path: str) -> PurePosixPath:
    path = PurePosixPath(cgroup_path)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError(f"cgroup path must be absolute, below the root and without '..': {cgroup_path!r}")
    return path.relative_to("/")


def _v1_dir(layout: CgroupLayout, controller: str, relative: PurePosixPath) -> Path | None:
    mount = layout.v1.get(controller)
    return mount / relative if mount is not None else None


def read_optional(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _unescape_mountinfo(value: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), value)

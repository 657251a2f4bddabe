"""The cgroup values cAdvisor reports beyond CgroupStats: CPU time by mode and CFS throttling,
memory detail and OOM kills, the configured limits, block I/O, hugetlb, and the processes inside
with their open files (pressure is in CgroupStats).

As in cgroups.read_stats_at a hybrid host is read as v1, except for hugetlb when the kernel gave
that controller to the cgroup2 tree: runc makes every cgroup there too. Parsers take file
contents ("" for a file that is absent) so they can be checked on recorded text; read_details_at
and process_counts do the reading (blocking).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pycri.cgroups.usage import parse_int, parse_keyed, parse_limit, read_optional

if TYPE_CHECKING:
    from pycri.cgroups.layout import CgroupLayout

V1_FILES = {
    "cpuacct": ("cpuacct.usage_user", "cpuacct.usage_sys"),
    "cpu": ("cpu.stat", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"),
    "memory": (
        "memory.stat", "memory.kmem.usage_in_bytes", "memory.failcnt", "memory.max_usage_in_bytes",
        "memory.oom_control", "memory.limit_in_bytes", "memory.soft_limit_in_bytes", "memory.memsw.limit_in_bytes",
    ),
    "pids": ("pids.max",),
    "blkio": ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive"),
}  # fmt: skip
V2_FILES = (
    "cpu.stat", "cpu.max", "cpu.weight", "memory.stat", "memory.swap.current", "memory.events", "memory.peak",
    "memory.max", "memory.low", "memory.swap.max", "pids.max", "io.stat",
)  # fmt: skip
# v2 memory.stat without the "kernel" total (before Linux 5.18): the kernel's own allocations.
V2_KERNEL_PARTS = ("kernel_stack", "pagetables", "percpu", "sock", "vmalloc", "slab")
HUGETLB_FILE = re.compile(r"hugetlb\.([0-9]+[KMG]B)\.(usage_in_bytes|max_usage_in_bytes|current)")
V1_DEFAULT_CFS_PERIOD_US = 100_000


@dataclass(frozen=True)
class CpuDetails:
    user_ns: int
    system_ns: int
    periods: int
    throttled_periods: int
    throttled_ns: int


@dataclass(frozen=True)
class MemoryDetails:
    cache: int
    kernel: int
    mapped_file: int
    swap: int
    failcnt: int  # times usage hit the limit
    max_usage: int  # peak usage; 0 where the kernel keeps none
    oom_kills: int
    local_page_faults: int  # of this cgroup's own tasks; on v2 the hierarchy's (v2 keeps no other)
    local_major_page_faults: int


@dataclass(frozen=True)
class Limits:
    """Configured limits; None where there is none."""

    cpu_period_us: int
    cpu_quota_us: int | None
    cpu_shares: int
    memory: int | None
    memory_reservation: int | None
    memory_swap: int | None
    pids: int | None


@dataclass(frozen=True)
class DeviceIo:
    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass(frozen=True)
class HugetlbUsage:
    page_size: str  # as the kernel names it: "2MB", "1GB"
    usage: int
    max_usage: int | None  # v2 keeps no peak


@dataclass(frozen=True)
class CgroupDetails:
    cpu: CpuDetails
    memory: MemoryDetails
    limits: Limits
    io: tuple[DeviceIo, ...] = ()
    hugetlb: tuple[HugetlbUsage, ...] = ()
    pids: tuple[int, ...] = ()  # processes in the cgroup and the cgroups below it


@dataclass(frozen=True)
class ProcessCounts:
    file_descriptors: int
    sockets: int


def parse_blkio_v1(service_bytes: str, serviced: str) -> tuple[DeviceIo, ...]:
    """Per-device totals from blkio.throttle.io_service_bytes / io_serviced ("8:0 Read 4096" lines)."""
    totals: dict[tuple[int, int], dict[str, int]] = {}
    for text, suffix in ((service_bytes, "_bytes"), (serviced, "s")):
        for line in text.splitlines():
            parts = line.split()
            device = _device_number(parts[0]) if len(parts) == 3 else None
            if device is None or parts[1] not in ("Read", "Write") or not parts[2].isdecimal():
                continue
            key = ("read" if parts[1] == "Read" else "write") + suffix
            totals.setdefault(device, {})[key] = int(parts[2])
    return tuple(DeviceIo(major, minor, **values) for (major, minor), values in sorted(totals.items()))


def parse_io_stat(text: str) -> tuple[DeviceIo, ...]:
    """Per-device totals from v2 io.stat ("8:0 rbytes=4096 wbytes=0 rios=1 wios=0 ..." lines)."""
    names = {"rbytes": "read_bytes", "wbytes": "write_bytes", "rios": "reads", "wios": "writes"}
    found = []
    for line in text.splitlines():
        parts = line.split()
        device = _device_number(parts[0]) if parts else None
        if device is None:
            continue
        pairs = (part.partition("=") for part in parts[1:])
        values = {names[key]: int(value) for key, _, value in pairs if key in names and value.isdecimal()}
        found.append(DeviceIo(*device, **values))
    return tuple(found)


def parse_hugetlb(files: Mapping[str, str]) -> tuple[HugetlbUsage, ...]:
    """Usage per page size from hugetlb.<size>.usage_in_bytes / max_usage_in_bytes (v1) or .current (v2)."""
    sizes: dict[str, dict[str, int]] = {}
    for name, text in files.items():
        match = HUGETLB_FILE.fullmatch(name)
        if match is not None and text.strip():
            sizes.setdefault(match.group(1), {})[match.group(2)] = parse_int(text)
    return tuple(
        HugetlbUsage(
            page_size=size,
            usage=values.get("usage_in_bytes", values.get("current", 0)),
            max_usage=values.get("max_usage_in_bytes"),
        )
        for size, values in sorted(sizes.items())
    )


def weight_to_shares(weight: int) -> int:
    """The fewest v1 cpu.shares that runc's shares-to-weight mapping turns into this cpu.weight."""
    return 2 - (-(weight - 1) * 262142 // 9999)


def details_v1(files: Mapping[str, str], pids: Iterable[int] = ()) -> CgroupDetails:
    """Details from v1 file contents, keyed by file name (file names are unique across controllers)."""
    cpu_stat = parse_keyed(files.get("cpu.stat", ""))
    memory_stat = parse_keyed(files.get("memory.stat", ""))
    quota = parse_int(files.get("cpu.cfs_quota_us", ""))
    return CgroupDetails(
        cpu=CpuDetails(
            user_ns=parse_int(files.get("cpuacct.usage_user", "")),
            system_ns=parse_int(files.get("cpuacct.usage_sys", "")),
            periods=cpu_stat.get("nr_periods", 0),
            throttled_periods=cpu_stat.get("nr_throttled", 0),
            throttled_ns=cpu_stat.get("throttled_time", 0),
        ),
        memory=MemoryDetails(
            cache=memory_stat.get("total_cache", 0),
            kernel=parse_int(files.get("memory.kmem.usage_in_bytes", "")),
            mapped_file=memory_stat.get("total_mapped_file", 0),
            swap=memory_stat.get("total_swap", 0),
            failcnt=parse_int(files.get("memory.failcnt", "")),
            max_usage=parse_int(files.get("memory.max_usage_in_bytes", "")),
            oom_kills=parse_keyed(files.get("memory.oom_control", "")).get("oom_kill", 0),
            local_page_faults=memory_stat.get("pgfault", 0),
            local_major_page_faults=memory_stat.get("pgmajfault", 0),
        ),
        limits=Limits(
            cpu_period_us=parse_int(files.get("cpu.cfs_period_us", "")) or V1_DEFAULT_CFS_PERIOD_US,
            cpu_quota_us=quota if quota > 0 else None,
            cpu_shares=parse_int(files.get("cpu.shares", "")),
            memory=parse_limit(files.get("memory.limit_in_bytes", "")),
            memory_reservation=parse_limit(files.get("memory.soft_limit_in_bytes", "")),
            memory_swap=parse_limit(files.get("memory.memsw.limit_in_bytes", "")),
            pids=parse_limit(files.get("pids.max", "")),
        ),
        io=parse_blkio_v1(
            files.get("blkio.throttle.io_service_bytes_recursive", ""),
            files.get("blkio.throttle.io_serviced_recursive", ""),
        ),
        hugetlb=parse_hugetlb(files),
        pids=tuple(pids),
    )


def details_v2(files: Mapping[str, str], pids: Iterable[int] = ()) -> CgroupDetails:
    """Details from v2 file contents, keyed by file name."""
    cpu_stat = parse_keyed(files.get("cpu.stat", ""))
    memory_stat = parse_keyed(files.get("memory.stat", ""))
    events = parse_keyed(files.get("memory.events", ""))
    quota, _, period = (files.get("cpu.max", "").strip() or "max").partition(" ")
    kernel = memory_stat.get("kernel", sum(memory_stat.get(part, 0) for part in V2_KERNEL_PARTS))
    reservation = parse_int(files.get("memory.low", ""))
    return CgroupDetails(
        cpu=CpuDetails(
            user_ns=cpu_stat.get("user_usec", 0) * 1000,
            system_ns=cpu_stat.get("system_usec", 0) * 1000,
            periods=cpu_stat.get("nr_periods", 0),
            throttled_periods=cpu_stat.get("nr_throttled", 0),
            throttled_ns=cpu_stat.get("throttled_usec", 0) * 1000,
        ),
        memory=MemoryDetails(
            cache=memory_stat.get("file", 0),
            kernel=kernel,
            mapped_file=memory_stat.get("file_mapped", 0),
            swap=parse_int(files.get("memory.swap.current", "")),
            failcnt=events.get("max", 0),
            max_usage=parse_int(files.get("memory.peak", "")),
            oom_kills=events.get("oom_kill", 0),
            local_page_faults=memory_stat.get("pgfault", 0),
            local_major_page_faults=memory_stat.get("pgmajfault", 0),
        ),
        limits=Limits(
            cpu_period_us=int(period) if period.isdecimal() else V1_DEFAULT_CFS_PERIOD_US,
            cpu_quota_us=int(quota) if quota.isdecimal() else None,
            cpu_shares=weight_to_shares(parse_int(files.get("cpu.weight", "")) or 100),
            memory=parse_limit(files.get("memory.max", "")),
            memory_reservation=reservation or None,
            memory_swap=parse_limit(files.get("memory.swap.max", "")),
            pids=parse_limit(files.get("pids.max", "")),
        ),
        io=parse_io_stat(files.get("io.stat", "")),
        hugetlb=parse_hugetlb(files),
        pids=tuple(pids),
    )


def read_details_at(layout: CgroupLayout, directory: PurePosixPath) -> CgroupDetails:
    """Read the details of the cgroup at `directory` (relative to the hierarchy roots);
    FileNotFoundError when it does not exist."""
    if layout.unified is not None:
        unified = layout.unified / directory
        if not unified.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(unified))
        return details_v2({**_read_files(unified, V2_FILES), **_read_hugetlb(unified)}, _procs_below(unified))
    memory = layout.v1.get("memory")
    if memory is None or not (memory / directory).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such memory cgroup", str(directory))
    files: dict[str, str] = {}
    for controller, names in V1_FILES.items():
        mount = layout.v1.get(controller)
        if mount is not None:
            files.update(_read_files(mount / directory, names))
    for mount in (layout.v1.get("hugetlb"), layout.hybrid_unified):
        if mount is not None:
            files.update(_read_hugetlb(mount / directory))
    return details_v1(files, _procs_below(layout.v1.get("pids", memory) / directory))


def process_counts(pids: Iterable[int], proc: Path = Path("/proc")) -> ProcessCounts:
    """Open file descriptors and sockets of these processes (ones that exit meanwhile count nothing)."""
    descriptors = sockets = 0
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        descriptors += len(names)
        for name in names:
            try:
                sockets += os.readlink(fd_dir / name).startswith("socket:")
            except OSError:
                continue
    return ProcessCounts(file_descriptors=descriptors, sockets=sockets)


def parse_open_files_soft_limit(limits: str) -> int | None:
    """The soft "Max open files" of a /proc/<pid>/limits; None when unlimited or absent."""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return int(soft) if soft.isdecimal() else None
    return None


def _device_number(text: str) -> tuple[int, int] | None:
    major, _, minor = text.partition(":")
    return (int(major), int(minor)) if major.isdecimal() and minor.isdecimal() else None


def _read_files(directory: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: read_optional(directory / name) for name in names}


def _read_hugetlb(directory: Path) -> dict[str, str]:
    try:
        names = [name for name in os.listdir(directory) if HUGETLB_FILE.fullmatch(name)]
    except FileNotFoundError:
        names = []
    return _read_files(directory, names)


def _procs_below(directory: Path) -> list[int]:
    pids: list[int] = []
    for parent, _, _ in os.walk(directory):
        pids.extend(int(line) for line in read_optional(Path(parent) / "cgroup.procs").split())
    return pids

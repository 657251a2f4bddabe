"""cgroup v1 and v2 stats of one cgroup: the parsers, and the reader that takes a cgroup's
directory below the hierarchy roots (a CgroupManager turns a driver's cgroupsPath into one).

As runc does, a hybrid host (v1 controllers plus a cgroup2 beside them) is read as v1.
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pycri.cgroups.layout import CgroupLayout

# A limit this large is the kernel's "no limit" (v1 prints PAGE_COUNTER_MAX pages in bytes).
UNLIMITED_THRESHOLD = 1 << 62


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


def read_stats_at(layout: CgroupLayout, directory: PurePosixPath) -> CgroupStats:
    """Read the stats of the cgroup at `directory` (relative to the hierarchy roots);
    FileNotFoundError when it does not exist."""
    timestamp_ns = time.time_ns()
    if layout.unified is not None:
        unified = layout.unified / directory
        if not unified.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(unified))
        return stats_v2(
            cpu_stat=read_optional(unified / "cpu.stat"),
            memory_current=read_optional(unified / "memory.current"),
            memory_max=read_optional(unified / "memory.max"),
            memory_stat=read_optional(unified / "memory.stat"),
            pids_current=read_optional(unified / "pids.current"),
            timestamp_ns=timestamp_ns,
        )
    memory = v1_dir(layout, "memory", directory)
    if memory is None or not memory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such memory cgroup", str(memory or directory))
    cpuacct = v1_dir(layout, "cpuacct", directory)
    pids = v1_dir(layout, "pids", directory)
    return stats_v1(
        cpuacct_usage=read_optional(cpuacct / "cpuacct.usage") if cpuacct else "",
        memory_usage=read_optional(memory / "memory.usage_in_bytes"),
        memory_limit=read_optional(memory / "memory.limit_in_bytes"),
        memory_stat=read_optional(memory / "memory.stat"),
        pids_current=read_optional(pids / "pids.current") if pids else "",
        timestamp_ns=timestamp_ns,
    )


def v1_dir(layout: CgroupLayout, controller: str, directory: PurePosixPath) -> Path | None:
    mount = layout.v1.get(controller)
    return mount / directory if mount is not None else None


def read_optional(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""

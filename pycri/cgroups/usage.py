"""cgroup v1 and v2 stats of one cgroup: the parsers, and the reader that takes a cgroup's
directory below the hierarchy roots (a CgroupManager turns a driver's cgroupsPath into one).

As runc does, a hybrid host (v1 controllers plus a cgroup2 beside them) is read as v1, except
for pressure (PSI): the kernel keeps it per cgroup of the cgroup2 tree only, where runc makes
every cgroup too, so a hybrid host has it wherever that tree holds the cgroup.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pycri.cgroups.layout import CgroupLayout

# A limit this large is the kernel's "no limit" (v1 prints PAGE_COUNTER_MAX pages in bytes).
UNLIMITED_THRESHOLD = 1 << 62
PRESSURE_RESOURCES = ("cpu", "memory", "io")
_PSI_AVERAGE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,2})?")  # the kernel prints a percentage as %lu.%02lu
_PSI_TOTAL = re.compile(r"[0-9]{1,20}")  # microseconds, a u64


@dataclass(frozen=True)
class PsiData:
    """One line of a pressure file: the share of wall time stalled (percent) over the last 10, 60
    and 300 seconds, and the total stall time since the cgroup was made."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@dataclass(frozen=True)
class Pressure:
    """A cgroup2 <resource>.pressure file: time in which some tasks stalled on the resource, and
    time in which all of them did at once (`full`; None where the kernel writes no such line)."""

    some: PsiData
    full: PsiData | None


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
    pressure: Mapping[str, Pressure] = field(default_factory=dict)  # by PRESSURE_RESOURCES; empty without PSI
    swap_usage: int | None = None  # None where the kernel accounts no swap per cgroup
    swap_limit: int | None = None  # swap alone (not memory plus swap); None when unlimited


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


def parse_pressure(text: str) -> Pressure | None:
    """A pressure file; None without a well-formed "some" line (no file: PSI is off, or v1 only).
    A line with a value the kernel would not print is left out."""
    lines: dict[str, PsiData] = {}
    for line in text.splitlines():
        kind, *items = line.split() or [""]
        values = {key: value for key, _, value in (item.partition("=") for item in items)}
        averages = [values.get(key, "") for key in ("avg10", "avg60", "avg300")]
        total = values.get("total", "")
        well_formed = all(_PSI_AVERAGE.fullmatch(a) for a in averages) and _PSI_TOTAL.fullmatch(total)
        if kind in ("some", "full") and well_formed:
            avg10, avg60, avg300 = (float(a) for a in averages)
            lines[kind] = PsiData(avg10, avg60, avg300, total_us=int(total))
    if "some" not in lines:
        return None
    return Pressure(some=lines["some"], full=lines.get("full"))


def parse_pressures(files: Mapping[str, str]) -> dict[str, Pressure]:
    """The pressure of each resource whose file ("cpu.pressure", ...) is in `files` and well formed."""
    found = {resource: parse_pressure(files.get(f"{resource}.pressure", "")) for resource in PRESSURE_RESOURCES}
    return {resource: pressure for resource, pressure in found.items() if pressure is not None}


def stats_v1(
    *,
    cpuacct_usage: str,
    memory_usage: str,
    memory_limit: str,
    memory_stat: str,
    pids_current: str,
    timestamp_ns: int,
    memsw_limit: str = "",
    pressure: Mapping[str, str] | None = None,
) -> CgroupStats:
    """Stats from v1 file contents ("" for a file that is absent); totals are hierarchical. Swap is
    accounted where memory.stat has it (swap accounting on); its own limit is the memory plus swap
    limit less the memory limit. `pressure` holds the cgroup2 tree's pressure files, if any."""
    stat = parse_keyed(memory_stat)
    usage = parse_int(memory_usage)

    def total(key: str) -> int:
        return stat.get(f"total_{key}", stat.get(key, 0))

    limit, memsw = parse_limit(memory_limit), parse_limit(memsw_limit)
    swap_accounted = "total_swap" in stat or "swap" in stat
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
        pressure=parse_pressures(pressure or {}),
        swap_usage=total("swap") if swap_accounted else None,
        swap_limit=max(memsw - limit, 0) if swap_accounted and memsw is not None and limit is not None else None,
    )


def stats_v2(
    *,
    cpu_stat: str,
    memory_current: str,
    memory_max: str,
    memory_stat: str,
    pids_current: str,
    timestamp_ns: int,
    swap_current: str = "",
    swap_max: str = "",
    pressure: Mapping[str, str] | None = None,
) -> CgroupStats:
    """Stats from v2 file contents ("" for a file that is absent: memory.swap.* are absent
    without swap accounting, the pressure files without PSI)."""
    stat = parse_keyed(memory_stat)
    usage = parse_int(memory_current)
    swap_accounted = bool(swap_current.strip())
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
        pressure=parse_pressures(pressure or {}),
        swap_usage=parse_int(swap_current) if swap_accounted else None,
        swap_limit=parse_limit(swap_max) if swap_accounted else None,
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
            swap_current=read_optional(unified / "memory.swap.current"),
            swap_max=read_optional(unified / "memory.swap.max"),
            pressure=read_pressure_files(unified),
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
        memsw_limit=read_optional(memory / "memory.memsw.limit_in_bytes"),
        pressure=read_pressure_files(layout.hybrid_unified / directory) if layout.hybrid_unified else None,
    )


def read_pressure_files(directory: Path) -> dict[str, str]:
    """The pressure files of a cgroup2 directory by name ("" for one that is absent)."""
    return {name: read_optional(directory / name) for name in (f"{r}.pressure" for r in PRESSURE_RESOURCES)}


def v1_dir(layout: CgroupLayout, controller: str, directory: PurePosixPath) -> Path | None:
    mount = layout.v1.get(controller)
    return mount / directory if mount is not None else None


def read_optional(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""

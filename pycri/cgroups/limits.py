"""Limits pycri writes itself into a cgroup of its own: a pod's cgroup, which has no runtime
container for `runc update` to change. cgroup v1 (and the v1 controllers of a hybrid host) and v2.

A CgroupLimits is the whole state, not a change: None (or "") is no limit, the kernel's default
or the parent's cpuset, so a value left out lifts the one before. Writing is all or nothing: each
file's value is read first, and when the kernel refuses a write the files already written get
their old values back.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pycri.cgroups.layout import CgroupLayout
from pycri.cgroups.usage import parse_limit, read_optional

V1_UNLIMITED = "-1"
V2_UNLIMITED = "max"
DEFAULT_CPU_SHARES = 1024
DEFAULT_CPU_WEIGHT = 100
DEFAULT_CFS_PERIOD_US = 100_000
# A cgroup2 interface file ("memory.high"); the cgroup.* files move processes or change the tree.
UNIFIED_KEY = re.compile(r"(?!cgroup\.)[a-z]+\.[a-z0-9_.]+")
_V1_HUGETLB_LIMIT = re.compile(r"hugetlb\.([0-9]+[KMG]B)\.limit_in_bytes")
_V2_HUGETLB_LIMIT = re.compile(r"hugetlb\.([0-9]+[KMG]B)\.max")


@dataclass(frozen=True)
class CgroupLimits:
    cpu_shares: int | None = None  # relative weight as v1 shares; on v2 the cpu.weight runc maps them to
    cpu_quota_us: int | None = None  # CFS quota per period; None: unlimited
    cpu_period_us: int | None = None  # None: the kernel's default period
    cpuset_cpus: str = ""  # "": the parent's
    cpuset_mems: str = ""
    memory: int | None = None
    memory_swap: int | None = None  # memory plus swap, as v1's memsw counts it; None: unlimited
    hugepages: Mapping[str, int] = field(default_factory=dict)  # page size as the kernel names it ("2MB") -> bytes
    unified: Mapping[str, str] = field(default_factory=dict)  # raw cgroup2 files, written last; v2 hosts only


@dataclass(frozen=True)
class FileWrite:
    path: Path
    value: str
    setting: str  # the CgroupLimits field the value comes from


class LimitError(OSError):
    """The kernel refused a value, or a unified key names no file. `setting` is the CgroupLimits
    field (for unified: "unified[<key>]"); nothing is left changed."""

    def __init__(self, write: FileWrite, error_number: int, reason: str) -> None:
        super().__init__(error_number, f"{write.path.name} = {write.value!r}: {reason}")
        self.setting = write.setting


@dataclass
class LimitsPlan:
    writes: list[FileWrite] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # settings given that the host has no file for

    def add(self, path: Path, value: str, setting: str, given: bool) -> None:
        """Write `value` where the file is there (its controller is on); else note a setting that was given."""
        if path.is_file():
            self.writes.append(FileWrite(path, value, setting))
        elif given:
            self.skipped.append(setting)


def shares_to_weight(shares: int) -> int:
    """The cpu.weight runc gives for v1 cpu.shares (2..262144 -> 1..10000)."""
    return 1 + (shares - 2) * 9999 // 262142


def write_limits(layout: CgroupLayout, directory: PurePosixPath, limits: CgroupLimits) -> list[str]:
    """Give the existing cgroup at `directory` these limits (blocking). Returns the settings given
    that the host has no controller for, which are left out; LimitError when refused."""
    plan = plan_v2(layout.unified / directory, limits) if layout.unified else plan_v1(layout, directory, limits)
    apply_writes(plan.writes)
    return plan.skipped


def plan_v1(layout: CgroupLayout, directory: PurePosixPath, limits: CgroupLimits) -> LimitsPlan:
    plan = LimitsPlan()
    if "cpu" in layout.v1:
        cpu = layout.v1["cpu"] / directory
        shares, period = limits.cpu_shares or DEFAULT_CPU_SHARES, limits.cpu_period_us or DEFAULT_CFS_PERIOD_US
        plan.add(cpu / "cpu.shares", str(shares), "cpu_shares", limits.cpu_shares is not None)
        plan.add(cpu / "cpu.cfs_period_us", str(period), "cpu_period_us", limits.cpu_period_us is not None)
        quota = _v1_value(limits.cpu_quota_us)
        plan.add(cpu / "cpu.cfs_quota_us", quota, "cpu_quota_us", limits.cpu_quota_us is not None)
    if "cpuset" in layout.v1:
        cpuset = layout.v1["cpuset"] / directory
        for name, given in (("cpus", limits.cpuset_cpus), ("mems", limits.cpuset_mems)):
            # A v1 cpuset never inherits: no value of its own is its parent's.
            value = given or read_optional(cpuset.parent / f"cpuset.{name}").strip()
            plan.add(cpuset / f"cpuset.{name}", value, f"cpuset_{name}", bool(given))
    if "memory" in layout.v1:
        _plan_v1_memory(plan, layout.v1["memory"] / directory, limits)
    hugetlb = layout.v1.get("hugetlb") or layout.hybrid_unified
    if hugetlb is not None:
        files = _V1_HUGETLB_LIMIT if "hugetlb" in layout.v1 else _V2_HUGETLB_LIMIT
        unlimited = V1_UNLIMITED if "hugetlb" in layout.v1 else V2_UNLIMITED
        _plan_hugetlb(plan, hugetlb / directory, files, unlimited, limits.hugepages)
    elif limits.hugepages:
        plan.skipped.append("hugepages")
    if limits.unified:
        plan.skipped.append("unified")
    return plan


def _plan_v1_memory(plan: LimitsPlan, memory: Path, limits: CgroupLimits) -> None:
    """The memory limit may never exceed memory plus swap: raising it, memsw goes first."""
    limit = LimitsPlan()
    limit.add(memory / "memory.limit_in_bytes", _v1_value(limits.memory), "memory", limits.memory is not None)
    memsw = LimitsPlan()
    given = limits.memory_swap is not None and limits.memory_swap != limits.memory
    memsw.add(memory / "memory.memsw.limit_in_bytes", _v1_value(limits.memory_swap), "memory_swap", given)
    current = parse_limit(read_optional(memory / "memory.limit_in_bytes"))
    raising = limits.memory is None or (current is not None and limits.memory > current)
    first, second = (memsw, limit) if raising else (limit, memsw)
    for part in (first, second):
        plan.writes.extend(part.writes)
        plan.skipped.extend(part.skipped)


def plan_v2(cgroup: Path, limits: CgroupLimits) -> LimitsPlan:
    plan = LimitsPlan()
    weight = shares_to_weight(limits.cpu_shares) if limits.cpu_shares else DEFAULT_CPU_WEIGHT
    plan.add(cgroup / "cpu.weight", str(weight), "cpu_shares", limits.cpu_shares is not None)
    quota = V2_UNLIMITED if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
    period = limits.cpu_period_us or DEFAULT_CFS_PERIOD_US
    plan.add(cgroup / "cpu.max", f"{quota} {period}", "cpu_quota_us", limits.cpu_quota_us is not None)
    plan.add(cgroup / "cpuset.cpus", limits.cpuset_cpus, "cpuset_cpus", bool(limits.cpuset_cpus))
    plan.add(cgroup / "cpuset.mems", limits.cpuset_mems, "cpuset_mems", bool(limits.cpuset_mems))
    plan.add(cgroup / "memory.max", _v2_value(limits.memory), "memory", limits.memory is not None)
    # v2 limits swap alone, not memory plus swap.
    swap = None if limits.memory_swap is None else max(limits.memory_swap - (limits.memory or 0), 0)
    plan.add(cgroup / "memory.swap.max", _v2_value(swap), "memory_swap", bool(swap))
    _plan_hugetlb(plan, cgroup, _V2_HUGETLB_LIMIT, V2_UNLIMITED, limits.hugepages)
    for key, value in sorted(limits.unified.items()):
        write = FileWrite(cgroup / key, value, f"unified[{key}]")
        if not UNIFIED_KEY.fullmatch(key) or not write.path.is_file():
            raise LimitError(write, errno.ENOENT, "no such cgroup2 file")
        plan.writes.append(write)
    return plan


def _plan_hugetlb(
    plan: LimitsPlan, cgroup: Path, files: re.Pattern[str], unlimited: str, hugepages: Mapping[str, int]
) -> None:
    """Each page size the cgroup has a limit file for: the given limit, else none."""
    sizes: dict[str, Path] = {}
    with contextlib.suppress(FileNotFoundError):
        for path in cgroup.iterdir():
            match = files.fullmatch(path.name)
            if match is not None:
                sizes[match.group(1)] = path
    for size, path in sorted(sizes.items()):
        plan.add(path, str(hugepages[size]) if size in hugepages else unlimited, "hugepages", size in hugepages)
    if set(hugepages) - set(sizes):
        plan.skipped.append("hugepages")


def apply_writes(writes: list[FileWrite]) -> None:
    """Write each value that differs from the file's own; when one is refused, put back the
    values written before it, then raise LimitError."""
    done: list[tuple[FileWrite, str]] = []
    try:
        for write in writes:
            old = write.path.read_text().strip()
            if old == write.value:
                continue
            try:
                write.path.write_text(write.value)
            except OSError as error:
                raise LimitError(write, error.errno or errno.EIO, error.strerror or str(error)) from error
            done.append((write, old))
    except BaseException:
        for write, old in reversed(done):
            with contextlib.suppress(OSError):
                write.path.write_text(old)
        raise


def _v1_value(limit: int | None) -> str:
    return V1_UNLIMITED if limit is None else str(limit)


def _v2_value(limit: int | None) -> str:
    return V2_UNLIMITED if limit is None else str(limit)

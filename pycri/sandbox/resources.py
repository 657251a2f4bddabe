"""Pod-level resources: the limits of a pod's own cgroup, set by RunPodSandbox and changed by
UpdatePodSandboxResources (in-place pod resize, KEP 1287; pod-level resources, KEP 2837).

Kubelet sends the pod's resources (the sum of its containers') and the pod overhead apart; the
pod's cgroup holds both. Only a cgroup pycri chose for the pod (kubelet gave no cgroup parent) is
pycri's to change: kubelet resizes its own pod cgroups before it calls, so there, as on a stopped
pod, the call only records the figures, as containerd does. A request is the whole picture, not
a change: a value left out lifts the limit it had.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re

from pycri.api import api_pb2
from pycri.cgroups import CgroupManager
from pycri.cgroups.limits import DEFAULT_CFS_PERIOD_US, UNIFIED_KEY, CgroupLimits, LimitError
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound, PycriError
from pycri.sandbox.context import SandboxContext
from pycri.state import sandboxes
from pycri.state.sandboxes import SandboxRecord

log = logging.getLogger(__name__)

CPU_PERIOD_US = (1000, 1_000_000)  # the kernel's bounds for a CFS period
MIN_CPU_QUOTA_US = 1000
CPU_SHARES = (2, 262144)
OOM_SCORE_ADJ = (-1000, 1000)
UNIFIED_VALUE_MAX = 4096
_CPU_LIST = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_PAGE_SIZE = re.compile(r"[0-9]+[KMG]B")
# CgroupLimits fields by the LinuxContainerResources field they come from.
_REQUEST_FIELDS = {
    "cpu_shares": "cpu_shares",
    "cpu_quota_us": "cpu_quota",
    "cpu_period_us": "cpu_period",
    "cpuset_cpus": "cpuset_cpus",
    "cpuset_mems": "cpuset_mems",
    "memory": "memory_limit_in_bytes",
    "memory_swap": "memory_swap_limit_in_bytes",
    "hugepages": "hugepage_limits",
}


def pod_limits(
    overhead: api_pb2.LinuxContainerResources | None,
    resources: api_pb2.LinuxContainerResources | None,
    prefix: str = "",
) -> CgroupLimits:
    """The pod cgroup's limits for these figures, as kubelet sizes its own pod cgroups: shares and
    hugepages add up; CPU quota and memory are limited only when the resources limit them, and
    then the overhead is added; no swap limit given is no swap. InvalidArgument names a bad field
    (under `prefix`)."""
    overhead = overhead or api_pb2.LinuxContainerResources()
    resources = resources or api_pb2.LinuxContainerResources()
    check_resources(overhead, f"{prefix}overhead")
    check_resources(resources, f"{prefix}resources")
    period = resources.cpu_period or overhead.cpu_period or DEFAULT_CFS_PERIOD_US
    quota = None
    if resources.cpu_quota > 0:
        quota = resources.cpu_quota + _scaled_quota(overhead, period)
    memory = None
    if resources.memory_limit_in_bytes:
        memory = resources.memory_limit_in_bytes + overhead.memory_limit_in_bytes
    swap: int | None = memory
    if memory is None or resources.memory_swap_limit_in_bytes == -1:
        swap = None
    elif resources.memory_swap_limit_in_bytes > 0:
        swap = resources.memory_swap_limit_in_bytes + overhead.memory_limit_in_bytes
    hugepages: dict[str, int] = {}
    for limit in (*overhead.hugepage_limits, *resources.hugepage_limits):
        hugepages[limit.page_size] = hugepages.get(limit.page_size, 0) + limit.limit
    shares = resources.cpu_shares + overhead.cpu_shares
    return CgroupLimits(
        cpu_shares=min(shares, CPU_SHARES[1]) or None,
        cpu_quota_us=quota,
        cpu_period_us=period if resources.cpu_period or overhead.cpu_period else None,
        cpuset_cpus=resources.cpuset_cpus or overhead.cpuset_cpus,
        cpuset_mems=resources.cpuset_mems or overhead.cpuset_mems,
        memory=memory,
        memory_swap=swap,
        hugepages=hugepages,
        unified={**overhead.unified, **resources.unified},
    )


def _scaled_quota(overhead: api_pb2.LinuxContainerResources, period: int) -> int:
    """The overhead's CPU quota over the pod's period (rounded up)."""
    if overhead.cpu_quota <= 0:
        return 0
    own_period = overhead.cpu_period or DEFAULT_CFS_PERIOD_US
    return -(-overhead.cpu_quota * period // own_period)


def check_resources(resources: api_pb2.LinuxContainerResources, field: str) -> None:
    """InvalidArgument naming the first value the kernel would refuse or that makes no sense."""

    def refuse(name: str, why: str) -> None:
        raise InvalidArgument(f"{field}.{name}: {why}")

    period, quota, shares = resources.cpu_period, resources.cpu_quota, resources.cpu_shares
    if period and not CPU_PERIOD_US[0] <= period <= CPU_PERIOD_US[1]:
        refuse("cpu_period", f"{period} is not 0 (unset) or {CPU_PERIOD_US[0]}..{CPU_PERIOD_US[1]} microseconds")
    if quota not in (-1, 0) and quota < MIN_CPU_QUOTA_US:
        refuse("cpu_quota", f"{quota} is not -1 (no limit), 0 (unset) or at least {MIN_CPU_QUOTA_US} microseconds")
    if shares and not CPU_SHARES[0] <= shares <= CPU_SHARES[1]:
        refuse("cpu_shares", f"{shares} is not 0 (unset) or {CPU_SHARES[0]}..{CPU_SHARES[1]}")
    memory, swap = resources.memory_limit_in_bytes, resources.memory_swap_limit_in_bytes
    if memory < 0:
        refuse("memory_limit_in_bytes", f"{memory} is negative")
    if swap < -1:
        refuse("memory_swap_limit_in_bytes", f"{swap} is below -1 (no limit)")
    if swap > 0 and not 0 < memory <= swap:
        refuse("memory_swap_limit_in_bytes", f"{swap} limits memory plus swap: it needs a memory limit no higher")
    if not OOM_SCORE_ADJ[0] <= resources.oom_score_adj <= OOM_SCORE_ADJ[1]:
        refuse("oom_score_adj", f"{resources.oom_score_adj} is not in {OOM_SCORE_ADJ[0]}..{OOM_SCORE_ADJ[1]}")
    for name in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(resources, name)
        if value and not _is_cpu_list(value):
            refuse(name, f"{value!r} is not a list such as 0-2,5")
    sizes = [limit.page_size for limit in resources.hugepage_limits]
    for index, size in enumerate(sizes):
        if not _PAGE_SIZE.fullmatch(size) or size in sizes[:index]:
            refuse(f"hugepage_limits[{index}].page_size", f"{size!r} is not a page size such as 2MB, or is repeated")
    for key, value in resources.unified.items():
        if not UNIFIED_KEY.fullmatch(key):
            refuse(f"unified[{key!r}]", "not a cgroup2 interface file name (cgroup.* files are refused)")
        if len(value) > UNIFIED_VALUE_MAX or "\n" in value or "\0" in value:
            refuse(f"unified[{key!r}]", "the value is one line of at most 4096 characters")


def _is_cpu_list(value: str) -> bool:
    for item in value.split(","):
        match = _CPU_LIST.fullmatch(item)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            return False
    return True


async def apply_pod_limits(cgroups: CgroupManager, record: SandboxRecord, limits: CgroupLimits) -> None:
    """Give pycri's own cgroup of the pod these limits, all or none."""
    try:
        skipped = await asyncio.to_thread(cgroups.set_limits, record.cgroup_parent, limits)
    except LimitError as exc:
        raise _refused(exc, record) from exc
    if skipped:
        log.warning(
            "pod cgroup settings left out: the host has no controller for them",
            extra={"fields": {"id": record.id, "settings": ",".join(_REQUEST_FIELDS.get(s, s) for s in skipped)}},
        )


def _refused(exc: LimitError, record: SandboxRecord) -> PycriError:
    field = _REQUEST_FIELDS.get(exc.setting, exc.setting)
    message = f"resources.{field} (with the overhead) for pod cgroup {record.cgroup_parent}: {exc.strerror}"
    if exc.errno == errno.EBUSY:  # v1 cannot bring usage under the new memory limit
        return FailedPrecondition(message)
    if exc.errno in (errno.EINVAL, errno.ERANGE, errno.ENOENT, errno.EOVERFLOW):
        return InvalidArgument(message)
    return PycriError(message)


async def limit_new_pod(cgroups: CgroupManager, record: SandboxRecord) -> None:
    """RunPodSandbox: a pod with resources or overhead whose cgroup is pycri's starts with its limits."""
    linux = record.config.linux
    if not (linux.HasField("overhead") or linux.HasField("resources")):
        return
    if cgroups.owns_pod_parent(record.cgroup_parent):
        await apply_pod_limits(cgroups, record, pod_limits(linux.overhead, linux.resources, "config.linux."))


async def update_pod_resources(
    ctx: SandboxContext,
    sandbox_id: str,
    overhead: api_pb2.LinuxContainerResources | None,
    resources: api_pb2.LinuxContainerResources | None,
) -> None:
    """UpdatePodSandboxResources, under the pod's lock: the pod's own cgroup gets the new limits
    (a ready pod's), then the record the new figures; should the record fail, the old limits return."""
    record = ctx.state.sandbox(sandbox_id)
    if record is None:
        raise NotFound(f"pod sandbox {sandbox_id!r} not found")
    limits = pod_limits(overhead, resources)
    await ctx.nri.update_pod_sandbox(record, overhead, resources)  # before the pod's cgroup changes
    applied = record.ready and ctx.cgroups.owns_pod_parent(record.cgroup_parent)
    if applied:
        await apply_pod_limits(ctx.cgroups, record, limits)
    try:
        await ctx.state.update_sandbox(
            record.id, lambda current: sandboxes.resources_updated(current, overhead, resources)
        )
    except BaseException:
        if applied:
            linux = record.config.linux
            old = pod_limits(linux.overhead, linux.resources)
            await asyncio.shield(apply_pod_limits(ctx.cgroups, record, old))
        raise
    log.info("pod sandbox resources updated", extra={"fields": {"id": record.id, "cgroup_changed": applied}})
    if (updated := ctx.state.sandbox(record.id)) is not None:
        await ctx.nri.post_update_pod_sandbox(updated)

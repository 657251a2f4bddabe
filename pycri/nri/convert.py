"""pycri's records and OCI spec dicts as NRI messages, and NRI's resources back as CRI's."""

from __future__ import annotations

from typing import Any

from pycri.api import api_pb2
from pycri.nri.pb import api_pb2 as nri
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.sandboxes import SandboxRecord

_STATES = {
    ContainerState.CREATED: nri.CONTAINER_CREATED,
    ContainerState.RUNNING: nri.CONTAINER_RUNNING,
    ContainerState.EXITED: nri.CONTAINER_STOPPED,
}
_HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_NRI_HOOK_FIELDS = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")


def pod_sandbox(record: SandboxRecord) -> nri.PodSandbox:
    metadata = record.metadata
    pod = nri.PodSandbox(
        id=record.id,
        name=metadata.name,
        uid=metadata.uid,
        namespace=metadata.namespace,
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
        runtime_handler=record.runtime_handler,
        pid=record.pause_pid or 0,
        ips=list(record.ips),
    )
    pod.linux.cgroup_parent = record.cgroup_parent
    pod.linux.cgroups_path = record.cgroup_parent
    for kind, path in (("network", record.netns_path), ("ipc", record.ipc_path), ("uts", record.uts_path)):
        if path is not None:
            pod.linux.namespaces.add(type=kind, path=str(path))
    overhead = record.config.linux.overhead
    if overhead.ByteSize():
        pod.linux.pod_overhead.CopyFrom(resources_from_cri(overhead))
    if record.config.linux.resources.ByteSize():
        pod.linux.pod_resources.CopyFrom(resources_from_cri(record.config.linux.resources))
    return pod


def container(record: ContainerRecord, spec: dict[str, Any] | None) -> nri.Container:
    """The container as NRI shows it; its process, mounts, hooks and linux parts come from the OCI spec."""
    metadata = record.config.metadata
    message = nri.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        name=metadata.name,
        state=_STATES.get(record.state, nri.CONTAINER_UNKNOWN),
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
        pid=record.pid if record.state is ContainerState.RUNNING else 0,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        status_reason=record.reason,
        status_message=record.message,
    )
    message.user.uid = record.user.uid
    message.user.gid = record.user.gid
    message.user.additional_gids.extend(record.user.additional_gids)
    message.linux.cgroups_path = record.cgroups_path
    if spec is not None:
        fill_from_spec(message, spec)
    return message


def fill_from_spec(message: nri.Container, spec: dict[str, Any]) -> None:
    process = spec.get("process") or {}
    message.args.extend(process.get("args") or [])
    message.env.extend(process.get("env") or [])
    for limit in process.get("rlimits") or []:
        message.rlimits.add(type=limit["type"], hard=limit.get("hard", 0), soft=limit.get("soft", 0))
    for mount in spec.get("mounts") or []:
        message.mounts.add(
            destination=mount.get("destination", ""),
            type=mount.get("type", ""),
            source=mount.get("source", ""),
            options=mount.get("options") or [],
        )
    hooks = spec.get("hooks") or {}
    for kind, field in zip(_HOOK_KINDS, _NRI_HOOK_FIELDS, strict=True):
        for hook in hooks.get(kind) or []:
            added = getattr(message.hooks, field).add(
                path=hook["path"], args=hook.get("args") or [], env=hook.get("env") or []
            )
            if "timeout" in hook:
                added.timeout.value = hook["timeout"]
    linux = spec.get("linux") or {}
    for namespace in linux.get("namespaces") or []:
        message.linux.namespaces.add(type=namespace["type"], path=namespace.get("path", ""))
    for device in linux.get("devices") or []:
        added_device = message.linux.devices.add(
            path=device["path"], type=device.get("type", ""), major=device.get("major", 0), minor=device.get("minor", 0)
        )
        for key, target in (("fileMode", added_device.file_mode), ("uid", added_device.uid), ("gid", added_device.gid)):
            if key in device:
                target.value = device[key]
    message.linux.resources.CopyFrom(resources_from_oci(linux.get("resources") or {}))
    if "oomScoreAdj" in process:
        message.linux.oom_score_adj.value = process["oomScoreAdj"]
    message.linux.sysctl.update(linux.get("sysctl") or {})
    if linux.get("cgroupsPath"):
        message.linux.cgroups_path = linux["cgroupsPath"]


def resources_from_oci(resources: dict[str, Any]) -> nri.LinuxResources:
    message = nri.LinuxResources()
    memory = resources.get("memory") or {}
    for key, target in (
        ("limit", message.memory.limit),
        ("reservation", message.memory.reservation),
        ("swap", message.memory.swap),
        ("kernel", message.memory.kernel),
        ("kernelTCP", message.memory.kernel_tcp),
        ("swappiness", message.memory.swappiness),
        ("disableOOMKiller", message.memory.disable_oom_killer),
    ):
        if key in memory:
            target.value = memory[key]
    cpu = resources.get("cpu") or {}
    for key, target in (
        ("shares", message.cpu.shares),
        ("quota", message.cpu.quota),
        ("period", message.cpu.period),
        ("realtimeRuntime", message.cpu.realtime_runtime),
        ("realtimePeriod", message.cpu.realtime_period),
    ):
        if key in cpu:
            target.value = cpu[key]
    message.cpu.cpus = cpu.get("cpus", "")
    message.cpu.mems = cpu.get("mems", "")
    for hugepage in resources.get("hugepageLimits") or []:
        message.hugepage_limits.add(page_size=hugepage["pageSize"], limit=hugepage["limit"])
    message.unified.update(resources.get("unified") or {})
    if "pids" in resources:
        message.pids.limit = resources["pids"].get("limit", 0)
    for rule in resources.get("devices") or []:
        added = message.devices.add(
            allow=rule.get("allow", False), type=rule.get("type", ""), access=rule.get("access", "")
        )
        for key, target in (("major", added.major), ("minor", added.minor)):
            if key in rule:
                target.value = rule[key]
    return message


def resources_from_cri(resources: api_pb2.LinuxContainerResources) -> nri.LinuxResources:
    message = nri.LinuxResources()
    if resources.memory_limit_in_bytes:
        message.memory.limit.value = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes:
        message.memory.swap.value = resources.memory_swap_limit_in_bytes
    if resources.cpu_shares:
        message.cpu.shares.value = resources.cpu_shares
    if resources.cpu_quota:
        message.cpu.quota.value = resources.cpu_quota
    if resources.cpu_period:
        message.cpu.period.value = resources.cpu_period
    message.cpu.cpus = resources.cpuset_cpus
    message.cpu.mems = resources.cpuset_mems
    for hugepage in resources.hugepage_limits:
        message.hugepage_limits.add(page_size=hugepage.page_size, limit=hugepage.limit)
    message.unified.update(resources.unified)
    return message


def resources_to_cri(
    update: nri.LinuxResources, base: api_pb2.LinuxContainerResources | None
) -> api_pb2.LinuxContainerResources:
    """CRI resources: base with every field the NRI update sets replaced."""
    result = api_pb2.LinuxContainerResources()
    if base is not None:
        result.CopyFrom(base)
    if update.memory.HasField("limit"):
        result.memory_limit_in_bytes = update.memory.limit.value
    if update.memory.HasField("swap"):
        result.memory_swap_limit_in_bytes = update.memory.swap.value
    if update.cpu.HasField("shares"):
        result.cpu_shares = update.cpu.shares.value
    if update.cpu.HasField("quota"):
        result.cpu_quota = update.cpu.quota.value
    if update.cpu.HasField("period"):
        result.cpu_period = update.cpu.period.value
    if update.cpu.cpus:
        result.cpuset_cpus = update.cpu.cpus
    if update.cpu.mems:
        result.cpuset_mems = update.cpu.mems
    if update.hugepage_limits:
        del result.hugepage_limits[:]
        for hugepage in update.hugepage_limits:
            result.hugepage_limits.add(page_size=hugepage.page_size, limit=hugepage.limit)
    result.unified.update(update.unified)
    return result

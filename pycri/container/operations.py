"""What runs against a live container: ExecSync, UpdateContainerResources, ReopenContainerLog, stats."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pycri.api import api_pb2
from pycri.container.metadata import ContainerRecord, ContainerState, layer_dir
from pycri.container.service import ContainerService
from pycri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from pycri.image.snapshots import disk_usage
from pycri.oci import conmon
from pycri.oci.runtime import ContainerNotFoundError, ExecSpec, ExecTimeoutError, OciRuntimeError
from pycri.oci.spec_resources import linux_resources
from pycri.stats.cri import fill_cpu_memory, read_stats_if_any

REOPEN_WAIT_SECONDS = 5.0


def _running(service: ContainerService, container_id: str) -> ContainerRecord:
    record = service.get(container_id)
    service.refresh(record)
    if record.state is not ContainerState.RUNNING:
        raise FailedPrecondition(f"container {record.id} is {record.state.value}, not running")
    return record


async def exec_sync(
    service: ContainerService, container_id: str, command: list[str], timeout: float
) -> api_pb2.ExecSyncResponse:
    if not command:
        raise InvalidArgument("cmd: empty")
    record = _running(service, container_id)
    runtime = service.runtime(record.runtime_handler)
    try:
        result = await runtime.exec_sync(record.id, ExecSpec(args=command), timeout or None)
    except ExecTimeoutError as exc:
        raise DeadlineExceeded(f"exec in container {record.id}: {command[0]} did not finish in {timeout:g}s") from exc
    except ContainerNotFoundError as exc:
        raise NotFound(f"exec in container {record.id}: {exc}") from exc
    except OciRuntimeError as exc:
        raise FailedPrecondition(f"exec in container {record.id}: {exc}") from exc
    return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)


async def update_resources(
    service: ContainerService, container_id: str, resources: api_pb2.LinuxContainerResources
) -> None:
    record = service.get(container_id)
    service.refresh(record)
    if record.state is ContainerState.EXITED:
        raise FailedPrecondition(f"container {record.id} has exited")
    wanted = linux_resources(resources)
    try:
        await service.runtime(record.runtime_handler).update(record.id, wanted)
    except OciRuntimeError as exc:
        raise FailedPrecondition(f"update resources of container {record.id}: {exc}") from exc
    record.resources = resources
    await service.save(record)


async def reopen_log(service: ContainerService, container_id: str) -> None:
    """Ask conmon to reopen the log, and return once the new file is there (kubelet looks at once)."""
    record = _running(service, container_id)
    log_path = Path(record.log_path)
    try:
        await asyncio.to_thread(conmon.reopen_log, service.persist_dir(record.id))
    except OciRuntimeError as exc:
        raise FailedPrecondition(f"reopen log of container {record.id}: {exc}") from exc
    deadline = time.monotonic() + REOPEN_WAIT_SECONDS
    while not log_path.exists():
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"reopen log of container {record.id}: conmon wrote no new {log_path}")
        await asyncio.sleep(0.005)


def runtime_spec(service: ContainerService, record: ContainerRecord) -> dict[str, object] | None:
    try:
        return json.loads((service.persist_dir(record.id) / "config.json").read_text())
    except FileNotFoundError:
        return None


def container_stats(service: ContainerService, record: ContainerRecord) -> api_pb2.ContainerStats:
    """CPU and memory from the container's cgroup, disk from its writable layer (blocking: run in a thread)."""
    stats = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=record.id,
            metadata=record.config.metadata,
            labels=record.config.labels,
            annotations=record.config.annotations,
        )
    )
    now = time.time_ns()
    if record.state is ContainerState.RUNNING:
        cgroup = read_stats_if_any(record.cgroups_path)
        if cgroup is not None:
            fill_cpu_memory(stats.cpu, stats.memory, cgroup)
    used_bytes, inodes = disk_usage(layer_dir(service.root_dir, record.id) / "upper")
    stats.writable_layer.timestamp = now
    stats.writable_layer.fs_id.mountpoint = str(service.root_dir)
    stats.writable_layer.used_bytes.value = used_bytes
    stats.writable_layer.inodes_used.value = inodes
    return stats

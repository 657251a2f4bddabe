"""What runs against a live container: ExecSync, UpdateContainerResources, ReopenContainerLog, stats."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from pycri.api import api_pb2
from pycri.container.context import ContainerContext
from pycri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from pycri.image.snapshots import disk_usage
from pycri.oci.driver import runtime_error
from pycri.oci.runtime import ContainerNotFoundError, ExecSpec, ExecTimeoutError, OciRuntimeError
from pycri.oci.spec_resources import linux_resources
from pycri.state import containers
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.stats.cri import fill_cpu_memory, fill_io, fill_swap

REOPEN_WAIT_SECONDS = 5.0


async def exec_sync(
    ctx: ContainerContext, record: ContainerRecord, command: list[str], timeout: float
) -> api_pb2.ExecSyncResponse:
    if not command:
        raise InvalidArgument("cmd: empty")
    runtime = ctx.runtime(record.runtime_handler)
    try:
        result = await runtime.exec_sync(record.id, ExecSpec(args=command), timeout or None)
    except ExecTimeoutError as exc:
        raise DeadlineExceeded(f"exec in container {record.id}: {command[0]} did not finish in {timeout:g}s") from exc
    except ContainerNotFoundError as exc:
        raise NotFound(f"exec in container {record.id}: {exc}") from exc
    except OciRuntimeError as exc:
        raise runtime_error(exc, f"exec in container {record.id}", FailedPrecondition) from exc
    return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)


async def update_resources(
    ctx: ContainerContext, record: ContainerRecord, resources: api_pb2.LinuxContainerResources
) -> None:
    """Runs under the container's lock."""
    if record.state is ContainerState.EXITED:
        raise FailedPrecondition(f"container {record.id} has exited")
    try:
        await ctx.runtime(record.runtime_handler).update(record.id, linux_resources(resources, field="linux"))
    except OciRuntimeError as exc:
        raise runtime_error(exc, f"update resources of container {record.id}", FailedPrecondition) from exc
    await ctx.state.update_container(record.id, lambda current: containers.resources_updated(current, resources))


async def reopen_log(ctx: ContainerContext, record: ContainerRecord) -> None:
    """Ask conmon to reopen the log, and return once the new file is there (kubelet looks at once)."""
    log_path = Path(record.log_path)
    try:
        await asyncio.to_thread(ctx.runtime(record.runtime_handler).reopen_log, ctx.bundle_dir(record.id))
    except OciRuntimeError as exc:
        raise runtime_error(exc, f"reopen log of container {record.id}", FailedPrecondition) from exc
    deadline = time.monotonic() + REOPEN_WAIT_SECONDS
    while not log_path.exists():
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"reopen log of container {record.id}: conmon wrote no new {log_path}")
        await asyncio.sleep(0.005)


def container_stats(ctx: ContainerContext, record: ContainerRecord) -> api_pb2.ContainerStats:
    """CPU and memory from the container's cgroup, disk from its writable layer (blocking: run in a thread)."""
    stats = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=record.id,
            metadata=record.config.metadata,
            labels=record.config.labels,
            annotations=record.config.annotations,
        )
    )
    if record.state is ContainerState.RUNNING:
        with contextlib.suppress(FileNotFoundError):  # it just exited
            cgroup = ctx.cgroups.read_stats(record.cgroups_path)
            fill_cpu_memory(stats.cpu, stats.memory, cgroup)
            fill_io(stats.io, cgroup)
            fill_swap(stats.swap, cgroup)
    used_bytes, inodes = disk_usage(ctx.layer_dir(record.id, record.config) / "upper")
    stats.writable_layer.timestamp = time.time_ns()
    stats.writable_layer.fs_id.mountpoint = str(ctx.config.root_dir)
    stats.writable_layer.used_bytes.value = used_bytes
    stats.writable_layer.inodes_used.value = inodes
    return stats

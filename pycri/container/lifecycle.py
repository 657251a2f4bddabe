"""StartContainer, StopContainer, RemoveContainer, and exits as conmon reports them.

Each runs under the container's lock (pycri.calls.ObjectLocks). An exit is taken in when
conmon writes the exit file (inotify), never by looking on a read; a stop waits for that
report, and falls back to the process itself (pidfd, checked against its start time) when
conmon is gone and no report will ever come.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time

from pycri.api import api_pb2
from pycri.container.context import ContainerContext
from pycri.errors import FailedPrecondition
from pycri.faults import kill_point
from pycri.oci.driver import runtime_error
from pycri.oci.runtime import OciRuntimeError
from pycri.proc import ProcessRef
from pycri.state import containers
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.memory import ContainerChange

log = logging.getLogger(__name__)

START_INTENT = "start_container"
REMOVE_INTENT = "remove_container"
# conmon reports an exit within milliseconds; past this a stop looks at the process itself.
EXIT_REPORT_SECONDS = 2.0
KILL_WAIT_SECONDS = 30.0
_EVENTS = api_pb2.ContainerEventType


def _ran(at: int) -> ContainerChange:
    def change(record: ContainerRecord) -> ContainerRecord:
        if record.state is ContainerState.EXITED:  # it ended before the start was recorded
            return dataclasses.replace(record, started_at=at, finished_at=max(record.finished_at, at))
        return containers.started(record, at)

    return change


async def start_container(ctx: ContainerContext, container_id: str) -> None:
    record = ctx.state.container(container_id)
    if record is None:
        return
    if record.state is ContainerState.RUNNING and record.restored_from:
        return  # restored from a checkpoint by CreateContainer: running since then
    if record.state is not ContainerState.CREATED:
        raise FailedPrecondition(f"container {record.id} is {record.state.value}, not created")
    await ctx.nri.start_container(record)
    intent = await ctx.intents.begin(START_INTENT, record.id, {"record": containers.to_plan(record)})
    kill_point("start_container.intent")
    started_at = time.time_ns()
    try:
        await ctx.runtime(record.runtime_handler).start(record.id)
    except OciRuntimeError as exc:
        await ctx.state.finish(intent)
        raise runtime_error(exc, f"start container {record.id}") from exc
    kill_point("start_container.started")
    await ctx.state.update_container(
        record.id, _ran(started_at), finishes=intent, event=_EVENTS.CONTAINER_STARTED_EVENT
    )
    log.info("started container", extra={"fields": {"id": record.id}})
    if (started := ctx.state.container(record.id)) is not None:
        await ctx.nri.post_start_container(started)


async def take_exit(ctx: ContainerContext, container_id: str) -> bool:
    """Record the exit conmon wrote for this container, if it wrote one (True)."""
    record = ctx.state.container(container_id)
    if record is None or record.state is ContainerState.EXITED:
        return record is not None
    runtime = ctx.runtime(record.runtime_handler)
    info = await asyncio.to_thread(runtime.read_exit, record.id, ctx.bundle_dir(record.id))
    if info is None:
        return False

    def change(current: ContainerRecord) -> ContainerRecord:
        if current.state is ContainerState.EXITED:
            return current
        return containers.exited(current, info.code, info.finished_at_ns, oom_killed=info.oom_killed)

    await ctx.state.update_container(record.id, change, event=_EVENTS.CONTAINER_STOPPED_EVENT)
    return True


async def record_lost_exit(ctx: ContainerContext, container_id: str, message: str) -> None:
    """The process is gone and nobody recorded how it ended."""

    def change(current: ContainerRecord) -> ContainerRecord:
        if current.state is ContainerState.EXITED:
            return current
        return containers.exited(
            current, containers.UNKNOWN_EXIT_CODE, time.time_ns(), reason=containers.REASON_ERROR, message=message
        )

    await ctx.state.update_container(container_id, change, event=_EVENTS.CONTAINER_STOPPED_EVENT)


async def stop_container(ctx: ContainerContext, container_id: str, timeout: float) -> None:
    """The stop signal, then SIGKILL after `timeout` seconds; stopping what has exited is fine."""
    record = ctx.state.container(container_id)
    if record is None or record.state is ContainerState.EXITED:
        return
    runtime = ctx.runtime(record.runtime_handler)
    if record.state is ContainerState.RUNNING and timeout > 0:
        await _signal(ctx, record, record.stop_signal)
        kill_point("stop_container.signalled")
        if await ctx.state.wait_exited(record.id, timeout):
            log.info("stopped container", extra={"fields": {"id": record.id, "signal": record.stop_signal}})
            return
    await _signal(ctx, record, signal.SIGKILL)
    if await ctx.state.wait_exited(record.id, EXIT_REPORT_SECONDS):
        log.info("killed container", extra={"fields": {"id": record.id}})
        return
    # No report yet: wait for the process itself, then for conmon's word, then do without it.
    process = ProcessRef(record.pid, record.pid_start_time)
    if not await process.wait_exit(KILL_WAIT_SECONDS):
        raise FailedPrecondition(f"container {record.id} (pid {record.pid}) did not die of SIGKILL")
    if await ctx.state.wait_exited(record.id, ctx.config.timeouts.stop_exit_wait) or await take_exit(ctx, record.id):
        return
    await runtime.delete(record.id, force=True)
    await record_lost_exit(ctx, record.id, "conmon recorded no exit status")
    log.warning("container stopped without an exit status", extra={"fields": {"id": record.id}})


async def _signal(ctx: ContainerContext, record: ContainerRecord, signal_number: int) -> None:
    try:
        await ctx.runtime(record.runtime_handler).kill(record.id, signal_number)
    except OciRuntimeError as exc:
        # Gone between our look and the kill, the wait that follows sees it; if not, it times out.
        log.warning("kill failed", extra={"fields": {"id": record.id, "signal": signal_number, "error": str(exc)}})


async def remove_container(ctx: ContainerContext, container_id: str) -> None:
    """Kill it if need be, then remove it and everything it was made of; what is gone is fine."""
    record = ctx.state.container(container_id)
    if record is None:
        return
    if record.state is not ContainerState.EXITED:
        await stop_container(ctx, record.id, 0)
    intent = await ctx.intents.begin(REMOVE_INTENT, record.id, {"record": containers.to_plan(record)})
    kill_point("remove_container.intent")
    await ctx.nri.remove_container(ctx.state.container(record.id) or record)
    await ctx.runtime(record.runtime_handler).delete(record.id, force=True)
    kill_point("remove_container.runtime")
    await ctx.remove_host_side(record)
    await ctx.state.delete_container(record, finishes=intent)
    log.info("removed container", extra={"fields": {"id": record.id}})

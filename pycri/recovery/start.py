"""Recovery at start: make memory, the host and the database agree before the socket opens.

    load the store -> watch exits -> reconcile containers with conmon and runc ->
    reconcile pods -> resolve unfinished intents -> release stale leases ->
    orphan sweep -> image recovery and GC

After a reboot (the kernel's boot id changed) nothing pycri started runs any more: pods
are NOTREADY and containers EXITED with reason Unknown, so kubelet's Stop and Remove
calls clean up at once instead of waiting on processes that do not exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from pycri import telemetry
from pycri.container import checkpoint, lifecycle
from pycri.container.context import ContainerContext
from pycri.container.create import INTENT as CREATE_INTENT
from pycri.container.service import ContainerService
from pycri.oci.runtime import ContainerState as RuntimeState
from pycri.oci.runtime import ContainerStatus, OciRuntimeError
from pycri.proc import ProcessRef, boot_id, start_time
from pycri.recovery.sweep import Owned, Removal, SweepScope, sweep_orphans
from pycri.sandbox import service as sandbox_ops
from pycri.sandbox.context import attachment
from pycri.sandbox.pause import pause_process
from pycri.sandbox.service import SandboxService
from pycri.state import containers as container_states
from pycri.state import sandboxes as sandbox_states
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.intents import Intent, IntentLog
from pycri.state.memory import ContainerChange

log = logging.getLogger(__name__)

BOOT_ID_FACT = "boot_id"


async def recover(
    containers: ContainerService,
    sandboxes: SandboxService,
    intents: IntentLog,
    image_recovery: Callable[[list[Intent]], Awaitable[None]],
) -> None:
    ctx = containers.ctx
    started = time.monotonic()
    await asyncio.to_thread(ctx.state.load)
    rebooted = _rebooted(ctx)
    containers.watch_exits()
    await _reconcile_containers(ctx, rebooted)
    await _reconcile_sandboxes(sandboxes, rebooted)
    pending = await asyncio.to_thread(intents.pending)
    await _resolve_intents(containers, sandboxes, [i for i in pending if i.kind in _RUNTIME_KINDS])
    await _release_stale_leases(ctx)
    removals = await _sweep(containers, sandboxes)
    await image_recovery([i for i in pending if i.kind not in _RUNTIME_KINDS])
    await ctx.state.write_node_fact(BOOT_ID_FACT, boot_id())
    telemetry.recovery_done(time.monotonic() - started, Counter(removal.kind for removal in removals))
    log.info(
        "recovery done",
        extra={
            "fields": {"rebooted": rebooted, "intents": len(pending), "ms": round((time.monotonic() - started) * 1e3)}
        },
    )


_RUNTIME_KINDS = {
    CREATE_INTENT,
    checkpoint.INTENT,
    lifecycle.START_INTENT,
    lifecycle.REMOVE_INTENT,
    sandbox_ops.RUN_INTENT,
    sandbox_ops.STOP_INTENT,
    sandbox_ops.REMOVE_INTENT,
}


def _rebooted(ctx: ContainerContext) -> bool:
    last = ctx.state.node_fact(BOOT_ID_FACT)
    return last is not None and last != boot_id()


async def _runtime_states(ctx: ContainerContext) -> dict[str, RuntimeState]:
    """What each runtime handler knows of its containers: one `list` per handler."""
    found: dict[str, RuntimeState] = {}
    for runtime in ctx.runtimes.values():
        try:
            for state in await runtime.list_containers():
                found[state.id] = state
        except OciRuntimeError as exc:
            log.error("runtime list failed", extra={"fields": {"handler": runtime.name, "error": str(exc)}})
    return found


async def _reconcile_containers(ctx: ContainerContext, rebooted: bool) -> None:
    live = [r for r in ctx.state.containers() if r.state is not ContainerState.EXITED]
    if not live:
        return
    runtime_states = {} if rebooted else await _runtime_states(ctx)
    counts: dict[str, int] = defaultdict(int)
    for record in live:
        if await lifecycle.take_exit(ctx, record.id):
            counts["exited"] += 1
            continue
        runtime_state = runtime_states.get(record.id)
        if runtime_state is not None and runtime_state.status is ContainerStatus.PAUSED:
            counts["resumed"] += await _resume(ctx, record)
        change = _reconciled(record, runtime_state, rebooted)
        if change is not None:
            await ctx.state.update_container(record.id, change)
            counts["changed"] += 1
    log.info("containers reconciled", extra={"fields": {"live": len(live), **counts}})


async def _resume(ctx: ContainerContext, record: ContainerRecord) -> int:
    """pycri pauses a container only while CRIU dumps it (CheckpointContainer), so one that is
    paused now was left so by a crash: it runs on. 1 when resumed."""
    fields = {"id": record.id}
    try:
        await ctx.runtime(record.runtime_handler).resume(record.id)
    except OciRuntimeError as exc:
        log.error("could not resume a container a crash left paused", extra={"fields": {**fields, "error": str(exc)}})
        return 0
    log.warning("resumed a container a crash left paused", extra={"fields": fields})
    return 1


def _reconciled(record: ContainerRecord, runtime_state: RuntimeState | None, rebooted: bool) -> ContainerChange | None:
    now = time.time_ns()
    if rebooted:
        message = "the node rebooted; the container's process is gone"
        return lambda r: container_states.exited(
            r, container_states.UNKNOWN_EXIT_CODE, now, reason=container_states.REASON_UNKNOWN, message=message
        )
    if runtime_state is None or runtime_state.status is ContainerStatus.STOPPED:
        message = "the container's process ended while pycri was down and conmon recorded no exit status"
        return lambda r: container_states.exited(
            r, container_states.UNKNOWN_EXIT_CODE, now, reason=container_states.REASON_ERROR, message=message
        )
    if runtime_state.status is ContainerStatus.RUNNING and record.state is ContainerState.CREATED:
        # A start whose reply a crash swallowed: runc did start it.
        return lambda r: container_states.started(r, now)
    if record.pid_start_time == 0 and runtime_state.pid == record.pid:
        started_at = start_time(record.pid) or 0  # a row from before start times were kept
        return lambda r: r if started_at == 0 else _with_start_time(r, started_at)
    if record.pid_start_time and not ProcessRef(record.pid, record.pid_start_time).alive():
        message = "the container's process is gone and another process has its PID"
        return lambda r: container_states.exited(r, container_states.UNKNOWN_EXIT_CODE, now, message=message)
    return None


def _with_start_time(record: ContainerRecord, started_at: int) -> ContainerRecord:
    return dataclasses.replace(record, pid_start_time=started_at)


async def _reconcile_sandboxes(sandboxes: SandboxService, rebooted: bool) -> None:
    ctx = sandboxes.ctx
    for record in list(ctx.state.sandboxes()):
        if not record.ready:
            continue
        intact = not rebooted and await asyncio.to_thread(ctx.namespaces.intact, record)
        pause = pause_process(record)
        if intact and (not record.shared_pid or (pause is not None and pause.alive())):
            continue
        why = "the node rebooted" if rebooted else "its namespaces or pause process are gone"
        log.warning("pod sandbox is not ready", extra={"fields": {"id": record.id, "why": why}})
        await ctx.state.update_sandbox(record.id, sandbox_states.not_ready)


async def _resolve_intents(containers: ContainerService, sandboxes: SandboxService, pending: list[Intent]) -> None:
    ctx = containers.ctx
    for intent in pending:
        log.warning(
            "finishing an operation a crash cut short",
            extra={"fields": {"kind": intent.kind, "id": intent.object_id}},
        )
        try:
            if intent.kind in (CREATE_INTENT, lifecycle.REMOVE_INTENT):
                record = container_states.from_plan(intent.plan["record"])
                made = tuple(Path(p) for p in intent.plan.get("bind_sources", ()))
                await ctx.teardown(record, made if intent.kind == CREATE_INTENT else ())
                if ctx.state.container(record.id) is not None:
                    await ctx.state.delete_container(record, finishes=intent)
                else:
                    await ctx.state.finish(intent)
            elif intent.kind == lifecycle.START_INTENT:
                await ctx.state.finish(intent)  # the runtime's word was taken in by the reconcile
            elif intent.kind == checkpoint.INTENT:
                await checkpoint.discard_interrupted(ctx, intent)
            else:
                await sandboxes.finish_interrupted(intent)
        except Exception:  # noqa: BLE001 - the intent stays for the next start; the others go on
            log.exception("could not finish an interrupted operation", extra={"fields": {"id": intent.object_id}})


async def _release_stale_leases(ctx: ContainerContext) -> None:
    """Snapshot leases whose container or pause process no longer exists (their layers may go)."""
    owners = {r.id for r in ctx.state.containers()} | {r.id for r in ctx.state.sandboxes()}
    released = await ctx.images.metadata.release_snapshots_of_all_but(owners)
    if released:
        log.warning("released stale snapshot leases", extra={"fields": {"owners": released}})


async def _sweep(containers: ContainerService, sandboxes: SandboxService) -> list[Removal]:
    ctx = containers.ctx
    records = list(ctx.state.sandboxes())
    scope = SweepScope(
        root_dir=ctx.config.root_dir,
        state_dir=ctx.config.state_dir,
        runtimes=list(ctx.runtimes.values()),
        # Only the pods' own cgroups: pycri's top parent may be shared (several daemons on one
        # host, each with its own root), and a pod cgroup a crash left is named by its intent.
        pod_cgroup_parents=list(dict.fromkeys(r.cgroup_parent for r in records)),
    )
    owned = Owned(
        sandbox_ids=frozenset(r.id for r in records),
        container_ids=frozenset(r.id for r in ctx.state.containers()),
    )
    valid = [attachment(r) for r in records if r.netns_path is not None and r.ips]
    return await sweep_orphans(scope, owned, ctx.cgroups, sandboxes.ctx.network, valid)

"""CreateContainer: plan the record, record the intent, make the rootfs, bundle and runtime
container, then commit the record (and finish the intent) in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.cdi.inject import inject_devices
from pycri.cdi.registry import ResolvedDevices, resolve_requested
from pycri.container.checkpoint_restore import Restore, plan_restore, unpack_restore
from pycri.container.context import ContainerContext
from pycri.container.image_mounts import mount_image_volumes
from pycri.container.rootfs import make_layer_dirs, mount_leased, write_bundle
from pycri.container.signals import stop_signal
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound
from pycri.faults import kill_point
from pycri.oci.driver import ContainerCreate, runtime_error
from pycri.oci.runtime import OciRuntimeError
from pycri.oci.spec import ContainerSpecInput, container_spec
from pycri.oci.spec_mounts import missing_bind_sources
from pycri.proc import ProcessRef, start_time
from pycri.request_fields import check_relative_path
from pycri.sandbox.paths import sandbox_paths
from pycri.state import containers
from pycri.state.containers import ContainerRecord, ContainerState, ProcessUser
from pycri.state.intents import Intent
from pycri.state.sandboxes import SandboxRecord
from pycri.userns.layout import hand_to_pod_root
from pycri.userns.mappings import check_container
from pycri.userns.mounts import (
    bind_mounts,
    check_device_nodes,
    stage_added_binds,
    stage_idmapped_binds,
    unstage_idmapped_binds,
)

log = logging.getLogger(__name__)

INTENT = "create_container"


def log_path_of(sandbox: SandboxRecord, config: api_pb2.ContainerConfig, layers: Path) -> Path:
    if not config.log_path:
        return layers / "container.log"
    check_relative_path(config.log_path, "config.log_path")
    if not sandbox.log_directory:
        raise InvalidArgument("config.log_path: the pod sandbox has no log_directory")
    return Path(sandbox.log_directory) / config.log_path


def _process_user(spec: dict[str, Any]) -> ProcessUser:
    user = spec.get("process", {}).get("user", {})
    return ProcessUser(int(user.get("uid", 0)), int(user.get("gid", 0)), tuple(user.get("additionalGids") or ()))


def _make_bind_sources(sources: tuple[Path, ...], file_modes: Mapping[Path, int]) -> None:
    """Directories, as containerd makes them; a source named in `file_modes` (one a restored
    checkpoint had as a file, as CRI-O makes it) becomes an empty file with that mode."""
    for source in sources:
        if source not in file_modes:
            source.mkdir(parents=True, exist_ok=True)
            continue
        with contextlib.suppress(FileExistsError):
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, file_modes[source])
            finally:
                os.close(fd)


def _missing_with_parents(config: api_pb2.ContainerConfig) -> tuple[Path, ...]:
    """Bind sources to create as containerd does, shallowest first; a failed create removes them."""
    made: list[Path] = []
    for source in missing_bind_sources(config):
        made.extend(reversed([source, *(p for p in source.parents if not p.exists())]))
    return tuple(dict.fromkeys(made))


def target_pid_namespace(ctx: ContainerContext, sandbox: SandboxRecord, config: api_pb2.ContainerConfig) -> Path | None:
    """The PID namespace a container with namespace_options.pid TARGET joins (kubectl debug
    --target): that of a running container of the same pod, checked by PID and start time."""
    options = config.linux.security_context.namespace_options
    if options.pid != api_pb2.NamespaceMode.TARGET:
        return None
    field = "config.linux.security_context.namespace_options.target_id"
    target = ctx.state.container(options.target_id) if options.target_id else None
    if target is None or target.sandbox_id != sandbox.id:
        raise NotFound(f"{field}: {options.target_id!r} is no container of pod sandbox {sandbox.id}")
    if target.state is not ContainerState.RUNNING or not ProcessRef(target.pid, target.pid_start_time).alive():
        raise FailedPrecondition(f"{field}: container {target.id} is not running")
    return Path(f"/proc/{target.pid}/ns/pid")


async def create_container(
    ctx: ContainerContext, sandbox: SandboxRecord, name: str, config: api_pb2.ContainerConfig
) -> str:
    """Runs under the pod's lock with the name reserved. Returns the new container's id."""
    if not sandbox.ready:
        raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
    restore = await plan_restore(ctx, sandbox, config)  # None unless config.image.image names a checkpoint archive
    if restore is not None:
        config = restore.config
    target_namespace = target_pid_namespace(ctx, sandbox, config)
    check_container(config, sandbox.user_namespace)
    cdi_devices = await resolve_requested(config, ctx.config.cdi.spec_dirs)
    image = await ctx.images.lookup(config.image.image)
    if image is None:
        raise NotFound(f"image {config.image.image!r} not found: pull it first")
    container_id = secrets.token_hex(32)
    layers = ctx.layer_dir(container_id, config)
    record = ContainerRecord(
        id=container_id,
        sandbox_id=sandbox.id,
        name=name,
        config=config,
        image_id=image.id,
        image_ref=config.image.image,
        state=ContainerState.CREATED,
        created_at=time.time_ns(),
        log_path=str(log_path_of(sandbox, config, layers)),
        runtime_handler=sandbox.runtime_handler,
        cgroups_path=ctx.cgroups.container_path(sandbox.cgroup_parent, container_id),
        stop_signal=stop_signal(config, image.config),
        restored_from=str(restore.archive) if restore is not None else "",
    )
    bind_sources = _missing_with_parents(config)
    plan = {"record": containers.to_plan(record), "bind_sources": [str(p) for p in bind_sources]}
    planned = _Planned(record, await ctx.intents.begin(INTENT, container_id, plan))
    kill_point("create_container.intent")
    try:
        made = _Sources(image.chain_ids, image.config, bind_sources, target_namespace, cdi_devices, restore)
        async with ctx.nri.operation():  # no NRI plugin synchronizes while a container is half made
            committed = await _make(ctx, sandbox, made, planned)
    except BaseException as exc:
        await asyncio.shield(_undo(ctx, planned.record, bind_sources, planned.intent))
        if isinstance(exc, OciRuntimeError):
            raise runtime_error(exc, f"create container {name!r}") from exc
        raise
    kill_point("create_container.committed")
    await ctx.nri.post_create_container(committed)
    log.info("created container", extra={"fields": {"id": container_id, "name": name, "sandbox": sandbox.id}})
    return committed.id


async def _undo(ctx: ContainerContext, record: ContainerRecord, bind_sources: tuple[Path, ...], intent: Intent) -> None:
    """Undo a CreateContainer. Should a step fail, the intent stays and the next start tries again;
    the caller still gets the error that made the undo necessary."""
    await ctx.nri.remove_container(record)
    try:
        await ctx.teardown(record, bind_sources)
    except Exception as exc:  # noqa: BLE001 - logged; the intent keeps what is left
        log.error("undoing a container creation failed", extra={"fields": {"id": record.id, "error": str(exc)}})
        return
    await ctx.state.finish(intent)
    log.warning("container creation undone", extra={"fields": {"id": record.id, "name": record.name}})


@dataclass(frozen=True)
class _Sources:
    """What CreateContainer makes the container from, beyond its record."""

    chain_ids: list[str]
    image_config: dict[str, Any]
    bind_sources: tuple[Path, ...]
    target_pid_namespace: Path | None
    cdi_devices: ResolvedDevices | None
    restore: Restore | None


@dataclass
class _Planned:
    """The record and its intent as CreateContainer last planned them, for the undo (an NRI
    plugin may give the container another cgroups path)."""

    record: ContainerRecord
    intent: Intent


async def _make(ctx: ContainerContext, sandbox: SandboxRecord, made: _Sources, planned: _Planned) -> ContainerRecord:
    record = planned.record
    layers = ctx.layer_dir(record.id, record.config)
    userns, userns_path = sandbox.user_namespace, sandbox.userns_path
    await asyncio.to_thread(make_layer_dirs, layers)
    if userns is not None:
        await asyncio.to_thread(hand_to_pod_root, userns, layers)
    await mount_leased(ctx.images, record.id, made.chain_ids, layers / "rootfs", layers, userns_path)
    spec_config = await mount_image_volumes(ctx.images, record.config, record.id, layers, userns_path)
    file_sources = made.restore.file_sources if made.restore is not None else {}
    await asyncio.to_thread(_make_bind_sources, made.bind_sources, file_sources)
    paths = sandbox_paths(sandbox)
    if userns is not None and userns_path is not None:
        staged = await asyncio.to_thread(stage_idmapped_binds, spec_config, paths, userns, userns_path, layers)
        spec_config, paths = staged
    kill_point("create_container.rootfs")

    spec_input = ContainerSpecInput(
        container_id=record.id,
        sandbox_id=sandbox.id,
        config=spec_config,
        sandbox=sandbox.config,
        image_config=made.image_config,
        rootfs=layers / "rootfs",
        sandbox_paths=paths,
        cgroups_path=record.cgroups_path,
        runtime_oom_score_adj=ctx.own_oom_score_adj,
        seccomp_profile_root=None,
        target_pid_namespace=made.target_pid_namespace,
        allowed_annotations=tuple(ctx.config.handler(record.runtime_handler).allowed_annotations),
    )
    spec = await asyncio.to_thread(container_spec, spec_input)
    generated_binds = bind_mounts(spec)
    if made.cdi_devices is not None:
        await asyncio.to_thread(inject_devices, spec, made.cdi_devices)
    if plugin_cgroups_path := await ctx.nri.create_container(sandbox, record, spec):
        # Before the runtime makes that cgroup: an undo, or recovery after a crash, must remove it.
        record = planned.record = dataclasses.replace(record, cgroups_path=plugin_cgroups_path)
        plan = {**planned.intent.plan, "record": containers.to_plan(record)}
        planned.intent = await ctx.intents.replan(planned.intent, plan)
    if userns_path is not None:  # CDI's and NRI plugins' binds: ID-mapped like the CRI mounts
        await asyncio.to_thread(stage_added_binds, spec, generated_binds, userns_path, layers)
        await asyncio.to_thread(check_device_nodes, spec)
    bundle = ctx.bundle_dir(record.id)
    await asyncio.to_thread(write_bundle, bundle, spec)
    kill_point("create_container.bundle")

    log_path = Path(record.log_path)
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    restore_from = None
    if made.restore is not None:
        restore_from = await asyncio.to_thread(unpack_restore, made.restore, layers / "rootfs", bundle, log_path)
    process = await ctx.runtime(record.runtime_handler).create(
        ContainerCreate(
            container_id=record.id,
            name=record.name,
            bundle=bundle,
            log_path=log_path,
            stdin=record.config.stdin,
            stdin_once=record.config.stdin_once,
            tty=record.config.tty,
            place_conmon=functools.partial(ctx.cgroups.place_conmon, sandbox.cgroup_parent, record.id),
            restore_from=restore_from,
        )
    )
    kill_point("create_container.runtime")
    if userns is not None:  # runc has bound them into the container: the staged mounts are done with
        await asyncio.to_thread(unstage_idmapped_binds, layers)
    created = dataclasses.replace(
        record,
        pid=process.container_pid,
        pid_start_time=start_time(process.container_pid) or 0,
        user=_process_user(spec),
    )
    event = api_pb2.ContainerEventType.CONTAINER_CREATED_EVENT
    if made.restore is not None:  # restored processes run from the moment the runtime returns
        created, event = containers.started(created, time.time_ns()), api_pb2.ContainerEventType.CONTAINER_STARTED_EVENT
    return await ctx.state.put_container(created, finishes=planned.intent, event=event)

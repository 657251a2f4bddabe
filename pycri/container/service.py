"""The container service: CRI container lifecycle on conmon and runc.

A container's rootfs is an overlay of its image's snapshots plus its own upper
dir under <root>/containers/<id>; its bundle (config.json, conmon's files) is
under <state>/containers/<id>. A lease on the snapshots keeps the image's
layers alive while the container exists, even when the image is removed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pycri.api import api_pb2
from pycri.config import Config
from pycri.container.bundle import log_path_of, make_bind_source, make_dirs, write_bundle
from pycri.container.events import EventBus, ExitWatch
from pycri.container.image_mounts import mount_image_volumes, unmount_image_volumes
from pycri.container.metadata import (
    ContainerRecord,
    ContainerRows,
    ContainerState,
    bundle_dir,
    layer_dir,
    reserved_name,
)
from pycri.container.signals import stop_signal
from pycri.container.views import container_status
from pycri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from pycri.ids import AmbiguousId, resolve_id
from pycri.image import overlay
from pycri.image.service import ImageService
from pycri.oci import conmon
from pycri.oci.runtime import OciRuntime, OciRuntimeError
from pycri.oci.spec import ContainerSpecInput, container_spec
from pycri.oci.spec_mounts import missing_bind_sources
from pycri.runtimes import cgroups_path as container_cgroups_path
from pycri.runtimes import oci_runtime
from pycri.sandbox.metadata import SandboxRecord
from pycri.state.store import Store
from pycri.undo import UndoStack

log = logging.getLogger(__name__)

# How long to wait for conmon's exit file once the container's process is gone.
EXIT_FILE_WAIT_SECONDS = 10.0
KILL_WAIT_SECONDS = 30.0


class ContainerService:
    def __init__(self, config: Config, store: Store, images: ImageService, sandboxes: SandboxLookup) -> None:
        self._config = config
        self._rows = ContainerRows(store)
        self._images = images
        self._sandboxes = sandboxes
        self._records: dict[str, ContainerRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._names: dict[str, str] = {}  # reserved name -> container id
        self._exit_dir = config.state_dir / "exits"
        self._socket_dir = config.state_dir / "attach"
        self._own_oom_score_adj = int(Path("/proc/self/oom_score_adj").read_text())
        self.events = EventBus()
        self._exit_watch = ExitWatch(self._exit_dir, self._exited)

    async def load(self) -> None:
        """Read the containers back at daemon start and take in exits that happened meanwhile."""
        for directory in (self._exit_dir, self._socket_dir, self._config.state_dir / "containers"):
            directory.mkdir(parents=True, exist_ok=True)
        for record in await asyncio.to_thread(self._rows.load_all):
            self._records[record.id] = record
            self._names[record.name] = record.id
            self.refresh(record)
        self._exit_watch.start()

    def close(self) -> None:
        self._exit_watch.stop()

    def _exited(self, container_id: str) -> None:
        record = self._records.get(container_id)
        if record is not None:
            self.refresh(record)

    def _emit(self, record: ContainerRecord, kind: int) -> None:
        event = api_pb2.ContainerEventResponse(
            container_id=record.id, container_event_type=kind, created_at=time.time_ns()
        )
        pod = self._sandboxes.find(record.sandbox_id)
        if pod is not None:
            event.pod_sandbox_status.CopyFrom(self._sandboxes.status(pod.id, False)[0])
        event.containers_statuses.extend(container_status(c) for c in self.in_sandbox(record.sandbox_id))
        self.events.publish(event)

    def runtime(self, handler: str) -> OciRuntime:
        return oci_runtime(self._config, handler)

    # -- lookups ----------------------------------------------------------------

    def find(self, container_id: str) -> ContainerRecord | None:
        if not container_id:
            raise InvalidArgument("container_id: empty")
        try:
            full = resolve_id(container_id, self._records)
        except AmbiguousId as exc:
            raise InvalidArgument(str(exc)) from None
        return None if full is None else self._records[full]

    def find_quietly(self, container_id: str) -> ContainerRecord | None:
        """For list filters: an ambiguous prefix matches nothing rather than failing."""
        try:
            return self.find(container_id)
        except InvalidArgument:
            return None

    def get(self, container_id: str) -> ContainerRecord:
        record = self.find(container_id)
        if record is None:
            raise NotFound(f"container {container_id} not found")
        return record

    def records(self) -> Iterator[ContainerRecord]:
        return iter(list(self._records.values()))

    def in_sandbox(self, sandbox_id: str) -> list[ContainerRecord]:
        return [record for record in self._records.values() if record.sandbox_id == sandbox_id]

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    @property
    def root_dir(self) -> Path:
        return self._config.root_dir

    def persist_dir(self, container_id: str) -> Path:
        return bundle_dir(self._config.state_dir, container_id)

    def refresh(self, record: ContainerRecord) -> None:
        """Take in an exit conmon recorded since we last looked."""
        if record.state is ContainerState.EXITED:
            return
        exit_info = conmon.read_exit(self._exit_dir, self.persist_dir(record.id), record.id)
        if exit_info is None:
            return
        record.state = ContainerState.EXITED
        record.exit_code = exit_info.code
        # The exit file's mtime comes from a coarser clock than ours; never before the start.
        record.finished_at = max(exit_info.finished_at_ns, record.started_at)
        if exit_info.oom_killed:
            record.reason = "OOMKilled"
        else:
            record.reason = "Completed" if exit_info.code == 0 else "Error"
        self._rows.update(record)
        self._emit(record, api_pb2.ContainerEventType.CONTAINER_STOPPED_EVENT)

    # -- create -------------------------------------------------------------------

    async def create(
        self, sandbox_id: str, config: api_pb2.ContainerConfig, sandbox_config: api_pb2.PodSandboxConfig
    ) -> str:
        if not config.metadata.name:
            raise InvalidArgument("config.metadata.name: empty")
        if not config.image.image:
            raise InvalidArgument("config.image.image: empty")
        sandbox = self._sandboxes.get(sandbox_id)
        # Held so that a concurrent StopPodSandbox/RemovePodSandbox sees this container.
        async with self._sandboxes.lock(sandbox.id):
            if not sandbox.ready:
                raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
            return await self._create_in(sandbox, config)

    async def _create_in(self, sandbox: SandboxRecord, config: api_pb2.ContainerConfig) -> str:
        image = await asyncio.to_thread(self._images.find, config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found: pull it first")
        name = reserved_name(config, sandbox.config)
        holder = self._names.get(name)
        if holder is not None:
            raise AlreadyExists(f"container name {name!r} is already reserved by container {holder}")
        container_id = secrets.token_hex(32)
        self._names[name] = container_id
        undo = UndoStack(f"container {container_id}")
        try:
            record = await self._create(container_id, name, sandbox, config, image.id, image.chain_ids, undo)
        except OciRuntimeError as exc:
            await asyncio.shield(undo.unwind())
            del self._names[name]
            raise RuntimeFailure(f"create container {name!r}: {exc}") from exc
        except BaseException:
            await asyncio.shield(undo.unwind())
            del self._names[name]
            raise
        self._records[container_id] = record
        self._emit(record, api_pb2.ContainerEventType.CONTAINER_CREATED_EVENT)
        log.info("created container", extra={"fields": {"id": container_id, "name": name, "sandbox": sandbox.id}})
        return container_id

    async def _create(
        self,
        container_id: str,
        name: str,
        sandbox: SandboxRecord,
        config: api_pb2.ContainerConfig,
        image_id: str,
        chain_ids: list[str],
        undo: UndoStack,
    ) -> ContainerRecord:
        layers = layer_dir(self._config.root_dir, container_id)
        rootfs = layers / "rootfs"
        await asyncio.to_thread(make_dirs, layers, ("upper", "work", "rootfs"))
        undo.push("remove the writable layer", lambda: shutil.rmtree(layers))
        await asyncio.to_thread(self._images.metadata.lease, container_id, chain_ids)
        undo.push("release the snapshot lease", lambda: self._images.metadata.release(container_id))
        await asyncio.to_thread(
            self._images.snapshots.mount_rootfs, list(reversed(chain_ids)), layers / "upper", layers / "work", rootfs
        )
        undo.push("unmount the rootfs", lambda: overlay.unmount(rootfs))
        spec_config = await mount_image_volumes(self._images, config, container_id, layers, undo)
        for source in missing_bind_sources(spec_config):
            await asyncio.to_thread(make_bind_source, source, undo)

        image_config = self._images.metadata.get(image_id)
        assert image_config is not None  # leased above, so it cannot have gone
        cgroups_path = container_cgroups_path(self._config, sandbox.cgroup_parent, container_id)
        spec_input = ContainerSpecInput(
            container_id=container_id,
            sandbox_id=sandbox.id,
            config=spec_config,
            sandbox=sandbox.config,
            image_config=image_config.config,
            rootfs=rootfs,
            sandbox_paths=sandbox.sandbox_paths(),
            cgroups_path=cgroups_path,
            runtime_oom_score_adj=self._own_oom_score_adj,
            seccomp_profile_root=None,
        )
        spec = await asyncio.to_thread(container_spec, spec_input)
        bundle = self.persist_dir(container_id)
        await asyncio.to_thread(write_bundle, bundle, spec)
        undo.push("remove the bundle", lambda: shutil.rmtree(bundle, ignore_errors=True))

        log_path = log_path_of(sandbox, config, layers)
        await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
        runtime = self.runtime(sandbox.runtime_handler)
        process = await conmon.create_container(
            conmon.ConmonCreate(
                container_id=container_id,
                name=name,
                bundle=bundle,
                runtime=runtime.handler,
                log_path=log_path,
                exit_dir=self._exit_dir,
                persist_dir=bundle,
                socket_dir=self._socket_dir,
                stdin=config.stdin,
                stdin_once=config.stdin_once,
                tty=config.tty,
                log_size_max=self._config.runtime.log_size_max,
                conmon_path=self._config.runtime.conmon,
            )
        )
        undo.push_async("delete the runc container", lambda: runtime.delete(container_id, force=True))
        undo.push(
            "remove conmon's files",
            lambda: conmon.remove_conmon_files(self._exit_dir, self._socket_dir, container_id),
        )
        record = ContainerRecord(
            id=container_id,
            sandbox_id=sandbox.id,
            name=name,
            config=config,
            image_id=image_id,
            image_ref=config.image.image,
            state=ContainerState.CREATED,
            created_at=time.time_ns(),
            log_path=str(log_path),
            runtime_handler=sandbox.runtime_handler,
            cgroups_path=cgroups_path,
            stop_signal=stop_signal(config, image_config.config),
            pid=process.container_pid,
        )
        await asyncio.to_thread(self._rows.insert, record)
        return record

    # -- start, stop, remove ---------------------------------------------------------

    async def start(self, container_id: str) -> None:
        record = self.get(container_id)
        async with self._lock(record.id):
            self.refresh(record)
            if record.state is not ContainerState.CREATED:
                raise FailedPrecondition(f"container {record.id} is {record.state.value}, not created")
            started_at = time.time_ns()
            try:
                await self.runtime(record.runtime_handler).start(record.id)
            except OciRuntimeError as exc:
                raise RuntimeFailure(f"start container {record.id}: {exc}") from exc
            record.state = ContainerState.RUNNING
            record.started_at = started_at
            await asyncio.to_thread(self._rows.update, record)
            self._emit(record, api_pb2.ContainerEventType.CONTAINER_STARTED_EVENT)
            self.refresh(record)  # it may have finished already
        log.info("started container", extra={"fields": {"id": record.id}})

    async def stop(self, container_id: str, timeout: float) -> None:
        """Stop signal, then SIGKILL after `timeout` seconds. Stopping what is gone is not an error."""
        record = self.find(container_id)
        if record is None:
            return
        async with self._lock(record.id):
            # A caller that gives up must not leave the container half-stopped.
            await asyncio.shield(self._stop(record, timeout))

    async def _stop(self, record: ContainerRecord, timeout: float) -> None:
        self.refresh(record)
        if record.state is ContainerState.EXITED:
            return
        runtime = self.runtime(record.runtime_handler)
        if record.state is ContainerState.RUNNING and timeout > 0:
            await _kill(runtime, record.id, record.stop_signal)
            if await conmon.wait_for_exit(record.pid, timeout):
                await self._await_exit_file(record)
                log.info("stopped container", extra={"fields": {"id": record.id, "signal": record.stop_signal}})
                return
        await _kill(runtime, record.id, signal.SIGKILL)
        await conmon.wait_for_exit(record.pid, KILL_WAIT_SECONDS)
        await self._await_exit_file(record)
        log.info("killed container", extra={"fields": {"id": record.id}})

    async def _await_exit_file(self, record: ContainerRecord) -> None:
        deadline = time.monotonic() + EXIT_FILE_WAIT_SECONDS
        while record.state is not ContainerState.EXITED and time.monotonic() < deadline:
            self.refresh(record)
            if record.state is not ContainerState.EXITED:
                await asyncio.sleep(0.02)
        if record.state is not ContainerState.EXITED:
            # conmon is gone without a word (killed): the process is dead all the same.
            record.state, record.finished_at, record.exit_code = ContainerState.EXITED, time.time_ns(), 137
            record.reason = "Error"
            record.message = "conmon recorded no exit status"
            await asyncio.to_thread(self._rows.update, record)

    async def remove(self, container_id: str) -> None:
        """Remove the container and its writable layer; removing what is gone is not an error."""
        record = self.find(container_id)
        if record is None:
            return
        async with self._lock(record.id):
            if record.id not in self._records:
                return
            await self._stop(record, 0)
            await self.runtime(record.runtime_handler).delete(record.id, force=True)
            await asyncio.to_thread(self._remove_files, record)
            await asyncio.to_thread(self._rows.delete, record.id)
            del self._records[record.id]
            self._names.pop(record.name, None)
            self._emit(record, api_pb2.ContainerEventType.CONTAINER_DELETED_EVENT)
        self._locks.pop(record.id, None)
        log.info("removed container", extra={"fields": {"id": record.id}})

    def _remove_files(self, record: ContainerRecord) -> None:
        layers = layer_dir(self._config.root_dir, record.id)
        unmount_image_volumes(layers)
        overlay.unmount(layers / "rootfs")
        shutil.rmtree(layers, ignore_errors=True)
        shutil.rmtree(self.persist_dir(record.id), ignore_errors=True)
        conmon.remove_conmon_files(self._exit_dir, self._socket_dir, record.id)
        self._images.metadata.release(record.id)

    async def save(self, record: ContainerRecord) -> None:
        await asyncio.to_thread(self._rows.update, record)


class SandboxLookup(Protocol):
    """What the container service needs of the sandbox service."""

    def get(self, sandbox_id: str) -> SandboxRecord: ...

    def find(self, sandbox_id: str) -> SandboxRecord | None: ...

    def status(self, sandbox_id: str, verbose: bool) -> tuple[api_pb2.PodSandboxStatus, dict[str, str]]: ...

    def lock(self, sandbox_id: str) -> asyncio.Lock: ...


async def _kill(runtime: OciRuntime, container_id: str, signal_number: int) -> None:
    try:
        await runtime.kill(container_id, signal_number)
    except OciRuntimeError as exc:
        # Already gone between our look and the kill: the wait that follows sees it.
        log.debug("kill failed", extra={"fields": {"id": container_id, "error": str(exc)}})

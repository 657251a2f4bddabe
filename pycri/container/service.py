"""The container service: CRI container lifecycle on conmon and runc.

Reads (List, Status) come from the in-memory store and nothing else. Mutations run under
the container's lock as tasks that outlive a caller who gives up (pycri.calls); create
also holds the pod's lock so a concurrent StopPodSandbox sees the new container. The work
itself lives one operation per module: create.py, lifecycle.py, operations.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from pycri.api import api_pb2
from pycri.calls import ObjectLocks, PendingCreates
from pycri.container import lifecycle, operations
from pycri.container.context import ContainerContext, sandbox_lock_key
from pycri.container.create import create_container
from pycri.container.views import container_entry, container_status, matches, no_record_filter, verbose_info
from pycri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycri.ids import find_by_id, find_quietly
from pycri.oci.exit_watch import ExitWatch
from pycri.request_fields import check_name
from pycri.state.containers import ContainerRecord, ContainerState, reserved_name
from pycri.state.views import ViewCache, repeated_field

log = logging.getLogger(__name__)

LIST_ENTRIES_FIELD = api_pb2.ListContainersResponse.CONTAINERS_FIELD_NUMBER
STATUS_FIELD = api_pb2.ContainerStatusResponse.STATUS_FIELD_NUMBER


class ContainerService:
    def __init__(self, ctx: ContainerContext, locks: ObjectLocks) -> None:
        self.ctx = ctx
        self._locks = locks
        self._creating: dict[str, str] = {}  # reserved name -> pod id, while CreateContainer runs
        self._entries: ViewCache[ContainerRecord, api_pb2.Container] = ViewCache(container_entry)
        self._encoded: ViewCache[ContainerRecord, bytes] = ViewCache(
            lambda record: repeated_field(LIST_ENTRIES_FIELD, self._entries.get(record))
        )
        self._statuses: ViewCache[ContainerRecord, bytes] = ViewCache(
            lambda record: repeated_field(STATUS_FIELD, container_status(record))
        )
        self._creates: PendingCreates[str] = PendingCreates(
            ctx.config.runtime.abandoned_create_grace, self.remove, "container"
        )
        self._exit_watch = ExitWatch(ctx.config.state_dir / "exits", self.exit_reported)
        self._exit_tasks: set[asyncio.Task[None]] = set()
        # Set by the sandbox service: an exit file named by no container is a pod's pause process.
        self.on_pause_exit: Callable[[str], Awaitable[None]] | None = None
        ctx.state.container_status = container_status

    def watch_exits(self) -> None:
        self.ctx.runtime(self.ctx.config.runtime.default_handler).exit_dir.mkdir(parents=True, exist_ok=True)
        self._exit_watch.start()

    def close(self) -> None:
        self._exit_watch.stop()

    def exit_reported(self, object_id: str) -> None:
        """conmon wrote an exit file for this container (or pause process)."""
        task = asyncio.ensure_future(self._take_exit(object_id))
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)

    async def _take_exit(self, object_id: str) -> None:
        try:
            if self.ctx.state.container(object_id) is not None:
                await lifecycle.take_exit(self.ctx, object_id)
                await self._relay_stop(object_id)
            elif self.on_pause_exit is not None:
                await self.on_pause_exit(object_id)
        except Exception:  # noqa: BLE001 - one bad exit file must not stop the others
            log.exception("taking in an exit failed", extra={"fields": {"id": object_id}})

    # ---- lookups (memory only) ----

    def find(self, container_id: str) -> ContainerRecord | None:
        state = self.ctx.state
        return find_by_id(container_id, "container_id", state.container, lambda: (r.id for r in state.containers()))

    def get(self, container_id: str) -> ContainerRecord:
        record = self.find(container_id)
        if record is None:
            raise NotFound(f"container {container_id} not found")
        return record

    def running(self, container_id: str) -> ContainerRecord:
        record = self.get(container_id)
        if record.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is {record.state.value}, not running")
        return record

    def in_sandbox(self, sandbox_id: str) -> list[ContainerRecord]:
        return self.ctx.state.containers_of(sandbox_id)

    def list_reply(self, wanted: api_pb2.ContainerFilter) -> bytes:
        """ListContainersResponse, serialised: joined from entries encoded once per record version."""
        candidates = self._candidates(wanted)
        self._encoded.keep_only(self.ctx.state.container_ids())
        if no_record_filter(wanted):  # kubelet's relist: every entry, no per-record test
            return b"".join(map(self._encoded.get, candidates))
        return b"".join(self._encoded.get(record) for record in candidates if matches(record, wanted))

    def list(self, wanted: api_pb2.ContainerFilter) -> list[api_pb2.Container]:
        self._entries.keep_only(self.ctx.state.container_ids())
        return [self._entries.get(record) for record in self._candidates(wanted) if matches(record, wanted)]

    def _candidates(self, wanted: api_pb2.ContainerFilter) -> Iterable[ContainerRecord]:
        if wanted.id:
            found = find_quietly(self.find, wanted.id)
            return [found] if found is not None else []
        if wanted.pod_sandbox_id and self.ctx.state.sandbox(wanted.pod_sandbox_id) is not None:
            return self.ctx.state.containers_of(wanted.pod_sandbox_id)
        return self.ctx.state.containers()

    def status_reply(self, container_id: str) -> bytes:
        """ContainerStatusResponse without verbose info, serialised once per record version."""
        record = self.get(container_id)
        self._statuses.keep_only(self.ctx.state.container_ids())
        return self._statuses.get(record)

    def status(self, container_id: str, verbose: bool) -> api_pb2.ContainerStatusResponse:
        record = self.get(container_id)
        reply = api_pb2.ContainerStatusResponse(status=container_status(record))
        if verbose:
            reply.info.update(verbose_info(record, self.ctx.bundle_dir(record.id) / "config.json"))
        return reply

    # ---- mutations ----

    async def create(
        self, sandbox_id: str, config: api_pb2.ContainerConfig, sandbox_config: api_pb2.PodSandboxConfig
    ) -> str:
        check_name(config.metadata.name, "config.metadata.name")
        if not config.image.image:
            raise InvalidArgument("config.image.image: empty")
        if not sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        sandbox = self.ctx.state.sandbox(sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        name = reserved_name(config, sandbox.config)

        async def reserved_then_created() -> str:
            holder = next((r.id for r in self.ctx.state.containers_of(sandbox.id) if r.name == name), None)
            if holder is not None or name in self._creating:
                raise AlreadyExists(f"container name {name!r} is already reserved by container {holder or '(new)'}")
            self._creating[name] = sandbox.id
            try:
                current = self.ctx.state.sandbox(sandbox.id)
                if current is None:
                    raise NotFound(f"pod sandbox {sandbox.id} not found")
                return await create_container(self.ctx, current, name, config)
            finally:
                del self._creating[name]

        key = sandbox_lock_key(sandbox.id)
        return await self._creates.create(name, lambda: self._locks.run(key, reserved_then_created))

    async def start(self, container_id: str) -> None:
        record = self.get(container_id)
        await self._locks.run(record.id, lambda: lifecycle.start_container(self.ctx, record.id))

    async def stop(self, container_id: str, timeout: float) -> None:
        record = self.find(container_id)
        if record is not None:
            await self._locks.run(record.id, lambda: lifecycle.stop_container(self.ctx, record.id, timeout))
            await self._relay_stop(record.id)

    async def _relay_stop(self, container_id: str) -> None:
        """NRI plugins hear of a stop once the record says EXITED, however it ended."""
        record = self.ctx.state.container(container_id)
        if record is not None and record.state is ContainerState.EXITED:
            await self.ctx.nri.stop_container(record)

    async def update_resources(self, container_id: str, resources: api_pb2.LinuxContainerResources) -> None:
        record = self.get(container_id)

        async def update() -> None:
            current = self.get(record.id)
            adjusted = await self.ctx.nri.update_container(current, resources)
            await operations.update_resources(self.ctx, current, adjusted)
            await self.ctx.nri.post_update_container(self.get(record.id))

        await self._locks.run(record.id, update)

    async def apply_plugin_update(self, container_id: str, resources: api_pb2.LinuxContainerResources) -> None:
        """An NRI plugin's update: set as asked, without asking the plugins again."""
        record = self.get(container_id)
        await self._locks.run(record.id, lambda: operations.update_resources(self.ctx, self.get(record.id), resources))

    async def evict(self, container_id: str) -> None:
        """An NRI plugin wants the container gone (the hook logs which and why): stop it at once."""
        await self.stop(self.get(container_id).id, 0)

    async def remove(self, container_id: str) -> None:
        record = self.find(container_id)
        if record is not None:
            await self._locks.run(record.id, lambda: lifecycle.remove_container(self.ctx, record.id))
            self._locks.forget(record.id)

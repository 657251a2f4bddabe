"""The pod sandbox service: RunPodSandbox, StopPodSandbox, RemovePodSandbox and the queries.

Reads come from the in-memory store only. A pod being set up has no record: its intent
(written before anything is made) names what it will make, so a crash at any step is
undone at the next start, and its reserved name lives here until the record commits.
Mutations run under the pod's lock (shared with CreateContainer) as tasks that outlive
a caller who gives up; RunPodSandbox's result waits for kubelet's retry (pycri.calls).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pycri.api import api_pb2
from pycri.calls import ObjectLocks, PendingCreates
from pycri.container.context import sandbox_lock_key
from pycri.container.service import ContainerService
from pycri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycri.faults import kill_point
from pycri.ids import find_by_id, find_quietly
from pycri.network.cni import CniNotReady, PortMapping
from pycri.network.cni_exec import CniError, CniPluginNotFound
from pycri.sandbox.context import SandboxContext, attachment, network_error
from pycri.sandbox.files import write_hostname, write_hosts, write_resolv_conf
from pycri.sandbox.plan import SandboxPlan, check_host_ports, plan_sandbox, port_mappings
from pycri.sandbox.resources import limit_new_pod, pod_limits, update_pod_resources
from pycri.sandbox.views import matches, no_record_filter, sandbox_status, sandbox_summary, verbose_info
from pycri.state import sandboxes
from pycri.state.intents import Intent
from pycri.state.sandboxes import SandboxRecord, SandboxState, reserved_name
from pycri.state.views import ViewCache, repeated_field

log = logging.getLogger(__name__)

RUN_INTENT = "run_pod_sandbox"
STOP_INTENT = "stop_pod_sandbox"
REMOVE_INTENT = "remove_pod_sandbox"
LIST_ENTRIES_FIELD = api_pb2.ListPodSandboxResponse.ITEMS_FIELD_NUMBER
STATUS_FIELD = api_pb2.PodSandboxStatusResponse.STATUS_FIELD_NUMBER


class SandboxService:
    def __init__(self, ctx: SandboxContext, containers: ContainerService, locks: ObjectLocks) -> None:
        self.ctx = ctx
        self._containers = containers
        self._locks = locks
        self._creating: dict[str, SandboxRecord] = {}  # reserved name -> the pod RunPodSandbox is making
        self._summaries: ViewCache[SandboxRecord, api_pb2.PodSandbox] = ViewCache(sandbox_summary)
        self._encoded: ViewCache[SandboxRecord, bytes] = ViewCache(
            lambda record: repeated_field(LIST_ENTRIES_FIELD, self._summaries.get(record))
        )
        self._statuses: ViewCache[SandboxRecord, bytes] = ViewCache(
            lambda record: repeated_field(STATUS_FIELD, sandbox_status(record))
        )
        self._creates: PendingCreates[str] = PendingCreates(
            ctx.config.runtime.abandoned_create_grace, self.remove, "pod sandbox"
        )
        self._sandbox_root = ctx.config.root_dir / "sandboxes"
        self._state_root = ctx.config.state_dir / "sandboxes"
        containers.on_pause_exit = self._pause_exited
        ctx.state.pod_status = sandbox_status

    # ---- lookups (memory only) ----

    def find(self, sandbox_id: str) -> SandboxRecord | None:
        """The sandbox with this id or unique id prefix, None when there is none.
        InvalidArgument for an empty id or a prefix shared by several sandboxes."""
        state = self.ctx.state
        return find_by_id(sandbox_id, "pod_sandbox_id", state.sandbox, lambda: (r.id for r in state.sandboxes()))

    def get(self, sandbox_id: str) -> SandboxRecord:
        record = self.find(sandbox_id)
        if record is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return record

    def records(self) -> list[SandboxRecord]:
        return list(self.ctx.state.sandboxes())

    def status_reply(self, sandbox_id: str) -> bytes:
        """The status part of PodSandboxStatusResponse (no verbose info), serialised once per record version."""
        record = self.get(sandbox_id)
        self._statuses.keep_only(self.ctx.state.sandbox_ids())
        return self._statuses.get(record)

    def status(self, sandbox_id: str, verbose: bool) -> tuple[api_pb2.PodSandboxStatus, dict[str, str]]:
        record = self.get(sandbox_id)
        return sandbox_status(record), verbose_info(record) if verbose else {}

    def list(self, sandbox_filter: api_pb2.PodSandboxFilter) -> list[api_pb2.PodSandbox]:
        self._summaries.keep_only(self.ctx.state.sandbox_ids())
        return [self._summaries.get(record) for record in self._candidates(sandbox_filter)]

    def list_reply(self, sandbox_filter: api_pb2.PodSandboxFilter) -> bytes:
        """ListPodSandboxResponse, serialised: joined from entries encoded once per record version."""
        self._encoded.keep_only(self.ctx.state.sandbox_ids())
        return b"".join(map(self._encoded.get, self._candidates(sandbox_filter)))

    def _candidates(self, sandbox_filter: api_pb2.PodSandboxFilter) -> Sequence[SandboxRecord]:
        if sandbox_filter.id:
            found = find_quietly(self.find, sandbox_filter.id)
            candidates = [found] if found is not None else []
        else:
            candidates = list(self.ctx.state.sandboxes())
        if no_record_filter(sandbox_filter):
            return candidates
        return [record for record in candidates if matches(record, sandbox_filter)]

    # ---- RunPodSandbox ----

    async def run(self, config: api_pb2.PodSandboxConfig, runtime_handler: str) -> str:
        plan = plan_sandbox(config, runtime_handler, self.ctx.config)
        self._check_cgroup_parent(config)
        pod_limits(config.linux.overhead, config.linux.resources, "config.linux.")  # refuses bad figures
        name = reserved_name(config.metadata)
        return await self._creates.create(name, lambda: self._reserve_and_run(name, config, plan))

    def _check_cgroup_parent(self, config: api_pb2.PodSandboxConfig) -> None:
        if config.linux.cgroup_parent:
            try:
                self.ctx.cgroups.check_parent(config.linux.cgroup_parent)
            except ValueError as exc:
                raise InvalidArgument(f"config.linux.cgroup_parent: {exc}") from None

    async def _reserve_and_run(self, name: str, config: api_pb2.PodSandboxConfig, plan: SandboxPlan) -> str:
        holder = next((r.id for r in self.ctx.state.sandboxes() if r.name == name), None)
        if holder is not None or name in self._creating:
            raise AlreadyExists(f"pod sandbox name {name!r} is already reserved for sandbox {holder or '(new)'}")
        check_host_ports(plan.port_mappings, self._published_ports())
        record = self._new_record(secrets.token_hex(32), config, plan)
        self._creating[name] = record
        try:
            return await self._locks.run(sandbox_lock_key(record.id), lambda: self._run(record, plan))
        finally:
            del self._creating[name]

    def _new_record(self, sandbox_id: str, config: api_pb2.PodSandboxConfig, plan: SandboxPlan) -> SandboxRecord:
        state_dir = self._state_root / sandbox_id
        return SandboxRecord(
            id=sandbox_id,
            config=config,
            runtime_handler=plan.runtime_handler,
            created_at=time.time_ns(),
            state=SandboxState.READY,
            root_dir=self._sandbox_root / sandbox_id,
            state_dir=state_dir,
            cgroup_parent=self.ctx.cgroups.pod_parent(config.linux.cgroup_parent, sandbox_id),
            log_directory=plan.log_directory,
            netns_path=state_dir / "netns" if plan.own_network else None,
            ipc_path=state_dir / "ipc" if plan.own_ipc else None,
            uts_path=state_dir / "uts" if plan.own_network else None,
            shm_path=state_dir / "shm" if plan.own_ipc else None,
        )

    def _published_ports(self) -> Iterator[tuple[str, PortMapping]]:
        records = [*self.ctx.state.sandboxes(), *self._creating.values()]
        for record in records:
            if record.state is SandboxState.READY and record.netns_path is not None:
                for mapping in port_mappings(record.config):
                    yield record.id, mapping

    async def _run(self, record: SandboxRecord, plan: SandboxPlan) -> str:
        started = time.monotonic()
        made_log_directory = not await asyncio.to_thread(Path(record.log_directory).is_dir)
        intent_plan = {"record": sandboxes.to_plan(record), "made_log_directory": made_log_directory}
        intent = await self.ctx.intents.begin(RUN_INTENT, record.id, intent_plan)
        kill_point("run_pod_sandbox.intent")
        done: set[str] = set()  # "network" once CNI ADD succeeded (a failed ADD undoes itself)
        try:
            ready = await self._set_up(record, plan, made_log_directory, done)
            async with self.ctx.nri.operation():  # the pod stays unseen while NRI plugins look at it
                await self.ctx.nri.run_pod_sandbox(ready)
                try:
                    await self.ctx.state.put_sandbox(ready, finishes=intent)
                except BaseException:  # the plugins saw the pod run: they hear of its end too
                    await asyncio.shield(self.ctx.nri.remove_pod_sandbox(ready))
                    raise
        except BaseException:
            await asyncio.shield(self._undo(record, made_log_directory, intent, network_attached="network" in done))
            raise
        kill_point("run_pod_sandbox.committed")
        ms = round((time.monotonic() - started) * 1e3, 1)
        log.info(
            "pod sandbox ready",
            extra={"fields": {"id": ready.id, "name": ready.name, "ips": ",".join(ready.ips), "ms": ms}},
        )
        return ready.id

    async def _set_up(
        self, record: SandboxRecord, plan: SandboxPlan, made_log_directory: bool, done: set[str]
    ) -> SandboxRecord:
        await asyncio.to_thread(self._prepare_host_side, record, plan, made_log_directory)
        if self.ctx.cgroups.owns_pod_parent(record.cgroup_parent):
            await asyncio.to_thread(self.ctx.cgroups.create_pod_parent, record.cgroup_parent)
        await limit_new_pod(self.ctx.cgroups, record)
        kill_point("run_pod_sandbox.host_side")
        if record.netns_path is not None:
            try:
                result = await self.ctx.network.add(attachment(record, plan))
            except (CniNotReady, CniPluginNotFound) as exc:
                raise FailedPrecondition(f"pod network is not ready: {exc}") from exc
            except CniError as exc:
                raise network_error(exc, "pod network setup failed") from exc
            done.add("network")
            record = dataclasses.replace(record, ips=result.ips, cni_result=dict(result.raw))
            kill_point("run_pod_sandbox.network")
        if plan.shared_pid:
            process = await self.ctx.pause.start(record)
            record = dataclasses.replace(record, pause_pid=process.pid, pause_start_time=process.start_time)
            kill_point("run_pod_sandbox.pause")
        await asyncio.to_thread(self._finish_host_side, record, plan)
        return record

    def _prepare_host_side(self, record: SandboxRecord, plan: SandboxPlan, made_log_directory: bool) -> None:
        """Dirs, namespace pins, /dev/shm and the hostname and resolv.conf files."""
        # Owner only: the pod's /dev/shm (a 1777 tmpfs) lies below; containers reach the hostname, hosts and
        # resolv.conf files (0644) through bind mounts, which need no search right on these dirs.
        for directory in (record.root_dir, record.state_dir):
            directory.mkdir(parents=True, mode=0o700)
        if made_log_directory:
            Path(record.log_directory).mkdir(parents=True, mode=0o755, exist_ok=True)
        self.ctx.namespaces.pin(record, plan.hostname)
        write_hostname(record.hostname_path, plan.hostname)
        write_resolv_conf(record.resolv_conf_path, record.config.dns_config)
        if record.netns_path is None:
            write_hosts(record.hosts_path, plan.hostname, (), host_network=True)

    def _finish_host_side(self, record: SandboxRecord, plan: SandboxPlan) -> None:
        """Sysctls and the hosts file with the pod's IPs."""
        self.ctx.namespaces.apply_sysctls(record, list(plan.sysctls))
        if record.netns_path is not None:
            write_hosts(record.hosts_path, plan.hostname, record.ips, host_network=False)

    async def _undo(
        self, record: SandboxRecord, made_log_directory: bool, intent: Intent, network_attached: bool = True
    ) -> None:
        """Undo a RunPodSandbox. Should a step fail, the intent stays and the next start tries again;
        the caller still gets the error that made the undo necessary."""
        try:
            await self.ctx.release(record, network_attached)
            await self.ctx.remove(record, made_log_directory)
        except Exception as exc:  # noqa: BLE001 - logged; the intent keeps what is left
            log.error("undoing a pod sandbox setup failed", extra={"fields": {"id": record.id, "error": str(exc)}})
            return
        await self.ctx.state.finish(intent)
        log.warning("pod sandbox setup undone", extra={"fields": {"id": record.id, "name": record.name}})

    # ---- UpdatePodSandboxResources ----

    async def update_resources(
        self,
        sandbox_id: str,
        overhead: api_pb2.LinuxContainerResources | None,
        resources: api_pb2.LinuxContainerResources | None,
    ) -> None:
        record = self.get(sandbox_id)
        await self._locks.run(
            sandbox_lock_key(record.id), lambda: update_pod_resources(self.ctx, record.id, overhead, resources)
        )

    # ---- StopPodSandbox, RemovePodSandbox ----

    async def stop(self, sandbox_id: str) -> None:
        """Stop the containers, release the network, namespaces and shm; an unknown id is fine."""
        record = self.find(sandbox_id)
        if record is None:
            log.info("stop of an unknown pod sandbox", extra={"fields": {"id": sandbox_id}})
            return
        await self._locks.run(sandbox_lock_key(record.id), lambda: self._stop(record.id))

    async def remove(self, sandbox_id: str) -> None:
        """Stop if need be, remove the containers, files and rows; an unknown id is fine."""
        record = self.find(sandbox_id)
        if record is None:
            log.info("remove of an unknown pod sandbox", extra={"fields": {"id": sandbox_id}})
            return
        await self._locks.run(sandbox_lock_key(record.id), lambda: self._remove(record.id))
        self._locks.forget(sandbox_lock_key(record.id))

    async def _stop(self, sandbox_id: str) -> None:
        record = self.ctx.state.sandbox(sandbox_id)
        if record is None:
            return
        intent = await self.ctx.intents.begin(STOP_INTENT, record.id, {"record": sandboxes.to_plan(record)})
        kill_point("stop_pod_sandbox.intent")
        await self._stop_steps(record)
        await self.ctx.state.update_sandbox(record.id, sandboxes.stopped, finishes=intent)
        log.info("pod sandbox stopped", extra={"fields": {"id": record.id, "name": record.name}})

    async def _stop_steps(self, record: SandboxRecord) -> None:
        # StopPodSandbox ends every container of the pod at once, as CRI asks.
        await asyncio.gather(*(self._containers.stop(c.id, 0) for c in self.ctx.state.containers_of(record.id)))
        kill_point("stop_pod_sandbox.containers")
        await self.ctx.nri.stop_pod_sandbox(record)
        await self.ctx.release(record)
        kill_point("stop_pod_sandbox.network")

    async def _remove(self, sandbox_id: str) -> None:
        record = self.ctx.state.sandbox(sandbox_id)
        if record is None:
            return
        intent = await self.ctx.intents.begin(REMOVE_INTENT, record.id, {"record": sandboxes.to_plan(record)})
        kill_point("remove_pod_sandbox.intent")
        await self._stop_steps(record)
        await self.ctx.state.update_sandbox(record.id, sandboxes.stopped)
        for container in self.ctx.state.containers_of(record.id):
            await self._containers.remove(container.id)
        kill_point("remove_pod_sandbox.containers")
        await self.ctx.remove(record)
        await self.ctx.nri.remove_pod_sandbox(record)
        await self.ctx.state.delete_sandbox(record.id, finishes=intent)
        log.info("pod sandbox removed", extra={"fields": {"id": record.id, "name": record.name}})

    async def finish_interrupted(self, intent: Intent) -> None:
        """Recovery: finish a stop or removal a crash cut short, or undo an unfinished run."""
        if intent.kind == RUN_INTENT:
            record = sandboxes.from_plan(intent.plan["record"], self._sandbox_root, self._state_root)
            await self._undo(record, bool(intent.plan.get("made_log_directory")), intent)
        else:
            finish_it = self._stop if intent.kind == STOP_INTENT else self._remove
            await self._locks.run(sandbox_lock_key(intent.object_id), lambda: finish_it(intent.object_id))
            if self.ctx.state.sandbox(intent.object_id) is None:  # nothing committed it: finish it here
                await self.ctx.state.finish(intent)

    # ---- the pause process ended on its own ----

    async def _pause_exited(self, sandbox_id: str) -> None:
        record = self.ctx.state.sandbox(sandbox_id)
        if record is None or not record.ready or not record.shared_pid:
            return
        log.warning("pause process of a pod sandbox exited", extra={"fields": {"id": sandbox_id}})
        await self.ctx.state.update_sandbox(sandbox_id, sandboxes.not_ready)

"""The pod sandbox service: RunPodSandbox, StopPodSandbox, RemovePodSandbox and the queries.

Records live in memory (the list and status RPCs kubelet polls never touch SQLite) and in
the `sandboxes` table, written from threads. A sandbox being set up is in state CREATING:
invisible to every RPC, and torn down at the next start if pycri dies before it is ready.

Locking: one asyncio.Lock per sandbox serialises run, stop and remove (the container service
takes the same lock through `lock()`); the name reservation is made under a service-wide
lock. Hooks run with the sandbox's lock held, so they must not take it themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

from pycri.api import api_pb2
from pycri.config import Config
from pycri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pycri.ids import AmbiguousId, resolve_id
from pycri.image.service import ImageService
from pycri.network.cni import CniManager, CniNotReady, CniResult, PodAttachment, PortMapping
from pycri.network.cni_exec import CniError, CniPluginNotFound
from pycri.network.netns import create_namespace, is_namespace_pinned, remove_namespace
from pycri.oci.runtime import OciRuntimeError
from pycri.sandbox.files import write_hostname, write_hosts, write_resolv_conf
from pycri.sandbox.metadata import SandboxRecord, SandboxRows, SandboxState
from pycri.sandbox.pause import PauseProcesses
from pycri.sandbox.plan import SandboxPlan, cgroup_parent, check_host_ports, plan_sandbox, port_mappings
from pycri.sandbox.shm import mount_shm, unmount_shm
from pycri.sandbox.sysctls import apply_sysctls
from pycri.sandbox.views import matches, sandbox_status, sandbox_summary, verbose_info
from pycri.state.store import Store
from pycri.stats.cgroups import remove_cgroup
from pycri.undo import UndoStack

log = logging.getLogger(__name__)

SandboxHook = Callable[[SandboxRecord], Awaitable[None]]


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _remove_dir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: something else uses it
        path.rmdir()


class SandboxService:
    def __init__(self, config: Config, store: Store, network: CniManager, images: ImageService) -> None:
        self._config = config
        self._network = network
        self._pause = PauseProcesses(config, images)
        self._root = config.root_dir / "sandboxes"
        self._state_root = config.state_dir / "sandboxes"
        self._rows = SandboxRows(store, self._root, self._state_root)
        self._records: dict[str, SandboxRecord] = {}
        self._names: dict[str, str] = {}  # reserved name -> sandbox id
        self._names_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._stop_hooks: list[SandboxHook] = []
        self._remove_hooks: list[SandboxHook] = []

    # ---- for the container service ----

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """The lock that serialises changes to one sandbox (and its containers)."""
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def add_stop_hook(self, hook: SandboxHook) -> None:
        """`hook(record)` stops the sandbox's containers; it runs first in every StopPodSandbox
        and RemovePodSandbox and must be idempotent."""
        self._stop_hooks.append(hook)

    def add_remove_hook(self, hook: SandboxHook) -> None:
        """`hook(record)` removes the sandbox's (stopped) containers in RemovePodSandbox."""
        self._remove_hooks.append(hook)

    def find(self, sandbox_id: str) -> SandboxRecord | None:
        """The sandbox with this id or unique id prefix, None when there is none.
        InvalidArgument for an empty id or a prefix shared by several sandboxes."""
        if not sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        record = self._records.get(sandbox_id)
        if record is None:
            try:
                found = resolve_id(sandbox_id, (r.id for r in self._visible()))
            except AmbiguousId as exc:
                raise InvalidArgument(str(exc)) from None
            record = self._records.get(found) if found else None
        if record is None or record.state is SandboxState.CREATING:
            return None
        return self._noticing_pause_exit(record)

    def get(self, sandbox_id: str) -> SandboxRecord:
        record = self.find(sandbox_id)
        if record is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return record

    def records(self) -> list[SandboxRecord]:
        """Every sandbox a CRI caller can see, oldest first."""
        return list(self._visible())

    # ---- queries ----

    def status(self, sandbox_id: str, verbose: bool) -> tuple[api_pb2.PodSandboxStatus, dict[str, str]]:
        record = self.get(sandbox_id)
        return sandbox_status(record), verbose_info(record) if verbose else {}

    def list(self, sandbox_filter: api_pb2.PodSandboxFilter) -> list[api_pb2.PodSandbox]:
        candidates: list[SandboxRecord] = list(self._visible())
        if sandbox_filter.id:
            # As containerd: a unique prefix selects its sandbox, anything else selects none.
            try:
                found = self.find(sandbox_filter.id)
            except InvalidArgument:
                found = None
            candidates = [found] if found is not None else []
        return [sandbox_summary(record) for record in candidates if matches(record, sandbox_filter)]

    def _visible(self) -> Iterator[SandboxRecord]:
        return (self._noticing_pause_exit(r) for r in self._records.values() if r.state is not SandboxState.CREATING)

    def _noticing_pause_exit(self, record: SandboxRecord) -> SandboxRecord:
        """A pod whose pause process ended (and its PID namespace with it) is not ready any more.
        Only in memory: the row follows at the next start, which sees the same exit file."""
        if record.state is SandboxState.READY and record.shared_pid and self._pause.exited(record):
            record.state = SandboxState.NOTREADY
            log.warning("pause process of a pod sandbox exited", extra={"fields": {"id": record.id}})
        return record

    # ---- RunPodSandbox ----

    async def run(self, config: api_pb2.PodSandboxConfig, runtime_handler: str) -> SandboxRecord:
        started = time.monotonic()
        plan = plan_sandbox(config, runtime_handler, self._config)
        record = self._new_record(secrets.token_hex(32), config, plan)
        async with self._names_lock:
            holder = self._names.get(record.name)
            if holder is not None:
                raise AlreadyExists(f"pod sandbox name {record.name!r} is already reserved for sandbox {holder}")
            check_host_ports(plan.port_mappings, self._published_ports())
            self._records[record.id] = record
            self._names[record.name] = record.id
        async with self.lock(record.id):
            undo = UndoStack(record.id)
            try:
                await self._set_up(record, plan, undo)
            except BaseException:
                # Shielded: a caller that gives up must not leave the undo half done.
                await asyncio.shield(self._abandon(record, undo))
                raise
        log.info(
            "pod sandbox ready",
            extra={
                "fields": {
                    "id": record.id,
                    "name": record.name,
                    "ips": ",".join(record.ips),
                    "ms": round((time.monotonic() - started) * 1e3, 1),
                }
            },
        )
        return record

    def _new_record(self, sandbox_id: str, config: api_pb2.PodSandboxConfig, plan: SandboxPlan) -> SandboxRecord:
        state_dir = self._state_root / sandbox_id
        return SandboxRecord(
            id=sandbox_id,
            config=config,
            runtime_handler=plan.runtime_handler,
            created_at=time.time_ns(),
            state=SandboxState.CREATING,
            root_dir=self._root / sandbox_id,
            state_dir=state_dir,
            cgroup_parent=cgroup_parent(config, self._config, sandbox_id),
            log_directory=plan.log_directory,
            netns_path=state_dir / "netns" if plan.own_network else None,
            ipc_path=state_dir / "ipc" if plan.own_ipc else None,
            uts_path=state_dir / "uts" if plan.own_network else None,
            shm_path=state_dir / "shm" if plan.own_ipc else None,
        )

    def _published_ports(self) -> Iterator[tuple[str, PortMapping]]:
        for record in self._records.values():
            if record.state is not SandboxState.NOTREADY and record.netns_path is not None:
                for mapping in port_mappings(record.config):
                    yield record.id, mapping

    async def _set_up(self, record: SandboxRecord, plan: SandboxPlan, undo: UndoStack) -> None:
        await asyncio.to_thread(self._prepare_host_side, record, plan, undo)
        if record.netns_path is not None:
            result = await self._attach_network(record, plan)
            undo.push_async("detach the pod network", partial(self._detach_network, record))
            record.ips = result.ips
            record.cni_result = dict(result.raw)
        if plan.shared_pid:
            record.pause_pid = await self._pause.start(record, undo)
        await asyncio.to_thread(self._finish_host_side, record, plan)
        record.state = SandboxState.READY

    def _prepare_host_side(self, record: SandboxRecord, plan: SandboxPlan, undo: UndoStack) -> None:
        """Dirs, the row, namespace pins, /dev/shm and the hostname and resolv.conf files."""
        for directory in (record.root_dir, record.state_dir):
            directory.mkdir(parents=True, mode=0o755)
            undo.push(f"remove {directory}", partial(_remove_tree, directory))
        self._rows.insert(record)
        undo.push("delete the row", partial(self._rows.delete, record.id))
        log_directory = Path(record.log_directory)
        if not log_directory.is_dir():
            log_directory.mkdir(parents=True, mode=0o755)
            undo.push("remove the log directory", partial(_remove_dir_if_empty, log_directory))
        if record.netns_path is not None:
            create_namespace("net", record.netns_path)
            undo.push("unpin the network namespace", partial(remove_namespace, record.netns_path))
        if record.ipc_path is not None:
            create_namespace("ipc", record.ipc_path)
            undo.push("unpin the IPC namespace", partial(remove_namespace, record.ipc_path))
        if record.uts_path is not None:
            create_namespace("uts", record.uts_path, hostname=plan.hostname)
            undo.push("unpin the UTS namespace", partial(remove_namespace, record.uts_path))
        if record.shm_path is not None:
            mount_shm(record.shm_path)
            undo.push("unmount /dev/shm", partial(unmount_shm, record.shm_path))
        write_hostname(record.hostname_path, plan.hostname)
        write_resolv_conf(record.resolv_conf_path, record.config.dns_config)
        if record.netns_path is None:
            write_hosts(record.hosts_path, plan.hostname, (), host_network=True)

    def _finish_host_side(self, record: SandboxRecord, plan: SandboxPlan) -> None:
        """Sysctls, the hosts file with the pod's IPs, and the row marked ready."""
        apply_sysctls(list(plan.sysctls), netns_path=record.netns_path, ipc_path=record.ipc_path)
        if record.netns_path is not None:
            write_hosts(record.hosts_path, plan.hostname, record.ips, host_network=False)
        self._rows.update(dataclasses.replace(record, state=SandboxState.READY))

    def _attachment(self, record: SandboxRecord, plan: SandboxPlan | None = None) -> PodAttachment:
        """The pod's CNI attachment; without a plan (teardown) it carries what DEL needs."""
        assert record.netns_path is not None
        metadata = record.metadata
        return PodAttachment(
            container_id=record.id,
            netns_path=record.netns_path,
            pod_name=metadata.name,
            pod_namespace=metadata.namespace,
            pod_uid=metadata.uid,
            port_mappings=plan.port_mappings if plan else (),
            bandwidth=plan.bandwidth if plan else None,
            dns=plan.dns if plan else None,
            cgroup_path=record.cgroup_parent,
            annotations=record.config.annotations,
        )

    async def _attach_network(self, record: SandboxRecord, plan: SandboxPlan) -> CniResult:
        try:
            return await self._network.add(self._attachment(record, plan))
        except (CniNotReady, CniPluginNotFound) as exc:
            raise FailedPrecondition(f"pod network is not ready: {exc}") from exc
        except CniError as exc:
            raise Unavailable(f"pod network setup failed: {exc}") from exc

    async def _detach_network(self, record: SandboxRecord) -> None:
        assert record.netns_path is not None
        if not is_namespace_pinned(record.netns_path):
            # An unpinned namespace file is no namespace: plugins must get no CNI_NETNS, not this file.
            await asyncio.to_thread(remove_namespace, record.netns_path)
        try:
            await self._network.delete(self._attachment(record))
        except CniError as exc:
            raise Unavailable(f"pod network teardown failed: {exc}") from exc

    async def _abandon(self, record: SandboxRecord, undo: UndoStack) -> None:
        failures = await undo.unwind()
        self._forget(record)
        log.warning(
            "pod sandbox setup undone",
            extra={"fields": {"id": record.id, "name": record.name, "undo_failures": len(failures)}},
        )

    def _forget(self, record: SandboxRecord) -> None:
        self._records.pop(record.id, None)
        if self._names.get(record.name) == record.id:
            del self._names[record.name]
        self._locks.pop(record.id, None)

    # ---- StopPodSandbox, RemovePodSandbox ----

    async def stop(self, sandbox_id: str) -> None:
        """Stop the containers, release the network, namespaces and shm; an unknown id is fine."""
        record = self.find(sandbox_id)
        if record is None:
            log.info("stop of an unknown pod sandbox", extra={"fields": {"id": sandbox_id}})
            return
        async with self.lock(record.id):
            if self._records.get(record.id) is record:
                await self._stop_locked(record)

    async def remove(self, sandbox_id: str) -> None:
        """Stop if need be, remove the containers, files and row; an unknown id is fine."""
        record = self.find(sandbox_id)
        if record is None:
            log.info("remove of an unknown pod sandbox", extra={"fields": {"id": sandbox_id}})
            return
        async with self.lock(record.id):
            if self._records.get(record.id) is not record:
                return
            await self._stop_locked(record)
            await self._remove_locked(record)

    async def _stop_locked(self, record: SandboxRecord) -> None:
        for hook in self._stop_hooks:
            await hook(record)
        if record.torn_down:
            return
        if record.shared_pid:
            try:
                await self._pause.stop(record)
            except OciRuntimeError as exc:
                raise FailedPrecondition(f"stop the pod's pause process: {exc}") from exc
        if record.netns_path is not None:
            await self._detach_network(record)
        await asyncio.to_thread(self._release_host_side, record)
        stopped = dataclasses.replace(record, state=SandboxState.NOTREADY, ips=(), pause_pid=None)
        await asyncio.to_thread(self._rows.update, stopped)
        record.state, record.ips, record.pause_pid, record.torn_down = SandboxState.NOTREADY, (), None, True
        log.info("pod sandbox stopped", extra={"fields": {"id": record.id, "name": record.name}})

    def _release_host_side(self, record: SandboxRecord) -> None:
        for pin in (record.netns_path, record.ipc_path, record.uts_path):
            if pin is not None:
                remove_namespace(pin)
        if record.shm_path is not None:
            unmount_shm(record.shm_path)

    async def _remove_locked(self, record: SandboxRecord) -> None:
        for hook in self._remove_hooks:
            await hook(record)
        if not record.config.linux.cgroup_parent and self._config.runtime.cgroup_driver == "cgroupfs":
            # pycri chose this cgroup (runc made it as the containers' parent); kubelet's are kubelet's.
            await remove_cgroup(record.cgroup_parent)
        await asyncio.to_thread(self._remove_files_and_row, record)
        self._forget(record)
        log.info("pod sandbox removed", extra={"fields": {"id": record.id, "name": record.name}})

    def _remove_files_and_row(self, record: SandboxRecord) -> None:
        _remove_tree(record.state_dir)
        _remove_tree(record.root_dir)
        self._rows.delete(record.id)

    # ---- daemon start ----

    async def reconcile(self) -> None:
        """Load the sandboxes; tear down those a crash left half made; mark NOTREADY those whose
        namespaces or shm are gone (after a reboot /run is empty). Rows are kept for kubelet."""
        records = await asyncio.to_thread(self._rows.load_all)
        for record in records:
            self._records[record.id] = record
            self._names[record.name] = record.id
        for record in records:
            if record.state is SandboxState.CREATING:
                await self._clean_up_interrupted(record)
            elif record.state is SandboxState.READY and not self._host_side_intact(record):
                record.state = SandboxState.NOTREADY
                await asyncio.to_thread(self._rows.update, record)
                log.warning("pod sandbox lost its namespaces", extra={"fields": {"id": record.id}})
        log.info("pod sandboxes loaded", extra={"fields": {"count": len(self._records)}})

    async def _clean_up_interrupted(self, record: SandboxRecord) -> None:
        try:
            await self._stop_locked(record)
            await self._remove_locked(record)
        except Exception as exc:  # noqa: BLE001 - kept as NOTREADY, for kubelet to stop and remove again
            record.state = SandboxState.NOTREADY
            await asyncio.to_thread(self._rows.update, record)
            log.error(
                "cleanup of an interrupted pod sandbox failed", extra={"fields": {"id": record.id, "error": str(exc)}}
            )

    def _host_side_intact(self, record: SandboxRecord) -> bool:
        pins = [p for p in (record.netns_path, record.ipc_path, record.uts_path) if p is not None]
        shm_ok = record.shm_path is None or os.path.ismount(record.shm_path)
        pause_ok = not record.shared_pid or not self._pause.exited(record)
        return shm_ok and pause_ok and all(is_namespace_pinned(pin) for pin in pins)

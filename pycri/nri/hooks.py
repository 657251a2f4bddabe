"""The NRI hooks the pod and container services call: one object, a no-op when NRI is off.

Each hook relays one lifecycle event to the plugins. RunPodSandbox, CreateContainer (and
its validation), StartContainer and the resource updates fail when a plugin answers with an error;
the other events only log it. A pod's or container's stop reaches the plugins once,
however it ends (StopContainer, StopPodSandbox, an exit of its own) and before its removal.

What a plugin's reply asks of other containers (updates, evictions) is carried out in a task of
its own, never awaited by the hook: the hook's caller may hold the lock of the pod or container
the event is about, and those actions take container locks (that very one, for an eviction of
the container being updated), so awaiting them there could deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from pycri.api import api_pb2
from pycri.config import Config, NriSection
from pycri.errors import FailedPrecondition, RuntimeFailure
from pycri.nri import convert
from pycri.nri.adaptation import Adaptation, PluginFailed, RuntimeSide
from pycri.nri.adjust import AdjustmentError, SpecAdjuster, UserNamespaceConflict
from pycri.nri.pb import api_pb2 as nri
from pycri.nri.plugin import Plugin
from pycri.state.containers import ContainerRecord
from pycri.state.memory import StateStore
from pycri.state.sandboxes import SandboxRecord

log = logging.getLogger(__name__)


class ContainerActions(Protocol):
    """What plugins may ask of containers other than the one an event is about."""

    async def apply_plugin_update(self, container_id: str, resources: api_pb2.LinuxContainerResources) -> None: ...

    async def evict(self, container_id: str) -> None: ...


class Nri:
    """Built with no arguments it is off: every hook returns at once."""

    def __init__(
        self,
        config: Config | None = None,
        state: StateStore | None = None,
        version: str = "",
        own_oom_score_adj: int = 0,
    ) -> None:
        self.enabled = config is not None and config.nri.enable
        self._state_store = state
        self._containers_dir = config.state_dir / "containers" if config is not None else Path()
        self._own_oom_score_adj = own_oom_score_adj
        self._actions: ContainerActions | None = None
        self._stopped_pods: set[str] = set()
        # A container's stop relay, joined by whoever else reports the same stop until it is removed.
        self._container_stops: dict[str, asyncio.Task[None]] = {}
        self._follow_ups: set[asyncio.Task[None]] = set()
        settings = config.nri if config is not None else NriSection()
        self.adaptation = Adaptation(settings, RuntimeSide("pycri", version, self._snapshot, self._update_containers))

    @property
    def _state(self) -> StateStore:
        assert self._state_store is not None, "NRI is on without a state store"
        return self._state_store

    @property
    def _relaying(self) -> bool:
        """Events go out while NRI is on and a plugin is connected; one that connects later synchronizes."""
        return self.enabled and self.adaptation.connected()

    def attach(self, actions: ContainerActions) -> None:
        self._actions = actions

    async def start(self) -> None:
        if self.enabled:
            await self.adaptation.start()

    async def stop(self) -> None:
        if self.enabled:
            await self.settle()
            await self.adaptation.stop()

    async def settle(self) -> None:
        """Wait until the updates and evictions plugins asked for in their replies are carried out."""
        while self._follow_ups:
            await asyncio.gather(*list(self._follow_ups), return_exceptions=True)

    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        """Around a pod or container creation: no plugin synchronizes until it is done or undone."""
        if not self.enabled:
            yield
            return
        async with self.adaptation.gate.operation():
            yield

    # ---- pods ----

    async def run_pod_sandbox(self, pod: SandboxRecord) -> None:
        if not self._relaying:
            return
        self._stopped_pods.discard(pod.id)
        message = convert.pod_sandbox(pod)
        try:
            await self.adaptation.dispatch(
                nri.RUN_POD_SANDBOX, "RunPodSandbox", nri.RunPodSandboxRequest(pod=message), nri.RunPodSandboxResponse
            )
        except PluginFailed as exc:
            await self.stop_pod_sandbox(pod)
            await self.remove_pod_sandbox(pod)
            raise RuntimeFailure(str(exc)) from None

    async def stop_pod_sandbox(self, pod: SandboxRecord) -> None:
        if not self._relaying or pod.id in self._stopped_pods:
            return
        self._stopped_pods.add(pod.id)
        request = nri.StopPodSandboxRequest(pod=convert.pod_sandbox(pod))
        await self._notify(nri.STOP_POD_SANDBOX, "StopPodSandbox", request, nri.StopPodSandboxResponse)

    async def remove_pod_sandbox(self, pod: SandboxRecord) -> None:
        try:
            if self._relaying:
                await self.stop_pod_sandbox(pod)
                request = nri.RemovePodSandboxRequest(pod=convert.pod_sandbox(pod))
                await self._notify(nri.REMOVE_POD_SANDBOX, "RemovePodSandbox", request, nri.RemovePodSandboxResponse)
        finally:  # also when the plugins that heard of its stop are gone
            self._stopped_pods.discard(pod.id)

    async def update_pod_sandbox(
        self,
        pod: SandboxRecord,
        overhead: api_pb2.LinuxContainerResources | None,
        resources: api_pb2.LinuxContainerResources | None,
    ) -> None:
        if not self._relaying:
            return
        request = nri.UpdatePodSandboxRequest(pod=convert.pod_sandbox(pod))
        if overhead is not None:
            request.overhead_linux_resources.CopyFrom(convert.resources_from_cri(overhead))
        if resources is not None:
            request.linux_resources.CopyFrom(convert.resources_from_cri(resources))
        try:
            await self.adaptation.dispatch(
                nri.UPDATE_POD_SANDBOX, "UpdatePodSandbox", request, nri.UpdatePodSandboxResponse
            )
        except PluginFailed as exc:
            raise RuntimeFailure(str(exc)) from None

    async def post_update_pod_sandbox(self, pod: SandboxRecord) -> None:
        if not self._relaying:
            return
        request = nri.PostUpdatePodSandboxRequest(pod=convert.pod_sandbox(pod))
        await self._notify(
            nri.POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox", request, nri.PostUpdatePodSandboxResponse
        )

    # ---- containers ----

    async def create_container(self, pod: SandboxRecord, record: ContainerRecord, spec: dict[str, Any]) -> str | None:
        """Let the plugins adjust the spec (in place); returns the cgroups path one of them set, if any."""
        if not self.enabled:
            return None
        if missing := self.adaptation.missing_required():
            raise FailedPrecondition(f"required NRI plugins are not connected: {', '.join(missing)}")
        if not self._relaying:
            return None
        self._container_stops.pop(record.id, None)
        adjuster = SpecAdjuster(spec, self._own_oom_score_adj)
        pod_message = convert.pod_sandbox(pod)
        pristine = convert.container(record, spec)
        combined = nri.ContainerAdjustment()
        consulted: list[nri.PluginInstance] = []
        updates: list[nri.ContainerUpdate] = []
        evictions: list[nri.ContainerEviction] = []

        def request() -> nri.CreateContainerRequest:
            return nri.CreateContainerRequest(pod=pod_message, container=convert.container(record, spec))

        def take(plugin: Plugin, reply: nri.CreateContainerResponse) -> None:
            adjuster.apply(plugin.name, reply.adjust)
            combined.MergeFrom(reply.adjust)
            consulted.append(nri.PluginInstance(name=plugin.base, index=plugin.index))
            updates.extend(reply.update)
            evictions.extend(reply.evict)

        try:
            await self.adaptation.dispatch(
                nri.CREATE_CONTAINER, "CreateContainer", request, nri.CreateContainerResponse, take
            )
            validation = nri.ValidateContainerAdjustmentRequest(
                pod=pod_message, container=pristine, adjust=combined, update=updates, plugins=consulted
            )
            validation.owners.owners[record.id].CopyFrom(adjuster.owners())
            verdicts = await self.adaptation.dispatch(
                nri.VALIDATE_CONTAINER_ADJUSTMENT,
                "ValidateContainerAdjustment",
                validation,
                nri.ValidateContainerAdjustmentResponse,
            )
        except UserNamespaceConflict as exc:
            raise FailedPrecondition(f"NRI: {exc}") from None
        except (PluginFailed, AdjustmentError) as exc:
            raise RuntimeFailure(f"NRI: {exc}") from None
        for plugin, verdict in verdicts:
            if verdict.reject:
                raise RuntimeFailure(
                    f"NRI: plugin {plugin.name} rejected the container's adjustments: {verdict.reason}"
                )
        if missing := self.adaptation.missing_required():  # one was dropped on the way
            raise FailedPrecondition(f"required NRI plugins are not connected: {', '.join(missing)}")
        self._follow_up("CreateContainer", updates, evictions)
        return adjuster.cgroups_path

    async def post_create_container(self, record: ContainerRecord) -> None:
        await self._container_event(nri.POST_CREATE_CONTAINER, "PostCreateContainer", record)

    async def start_container(self, record: ContainerRecord) -> None:
        if not self._relaying:
            return
        request = nri.StartContainerRequest(pod=self._pod_of(record), container=await self._container(record))
        try:
            await self.adaptation.dispatch(nri.START_CONTAINER, "StartContainer", request, nri.StartContainerResponse)
        except PluginFailed as exc:
            raise RuntimeFailure(str(exc)) from None

    async def post_start_container(self, record: ContainerRecord) -> None:
        await self._container_event(nri.POST_START_CONTAINER, "PostStartContainer", record)

    async def update_container(
        self, record: ContainerRecord, resources: api_pb2.LinuxContainerResources
    ) -> api_pb2.LinuxContainerResources:
        """The resources to set: those asked for, as the plugins adjusted them."""
        if not self._relaying:
            return resources
        request = nri.UpdateContainerRequest(
            pod=self._pod_of(record),
            container=await self._container(record),
            linux_resources=convert.resources_from_cri(resources),
        )
        try:
            replies = await self.adaptation.dispatch(
                nri.UPDATE_CONTAINER, "UpdateContainer", request, nri.UpdateContainerResponse
            )
        except PluginFailed as exc:
            raise RuntimeFailure(str(exc)) from None
        others: list[nri.ContainerUpdate] = []
        evictions: list[nri.ContainerEviction] = []
        for _, reply in replies:
            for update in reply.update:
                if update.container_id == record.id:
                    resources = convert.resources_to_cri(update.linux.resources, resources)
                else:
                    others.append(update)
            evictions.extend(reply.evict)
        self._follow_up("UpdateContainer", others, evictions)
        return resources

    async def post_update_container(self, record: ContainerRecord) -> None:
        await self._container_event(nri.POST_UPDATE_CONTAINER, "PostUpdateContainer", record)

    async def stop_container(self, record: ContainerRecord) -> None:
        """The plugins hear of the container's stop once; a second caller waits for that relay."""
        if not self._relaying:
            return
        relay = self._container_stops.get(record.id)
        if relay is None:
            relay = asyncio.ensure_future(self._relay_stop(record))
            self._container_stops[record.id] = relay
        await asyncio.shield(relay)

    async def _relay_stop(self, record: ContainerRecord) -> None:
        request = nri.StopContainerRequest(pod=self._pod_of(record), container=await self._container(record))
        try:
            replies = await self.adaptation.dispatch(
                nri.STOP_CONTAINER, "StopContainer", request, nri.StopContainerResponse
            )
        except PluginFailed as exc:
            log.warning("NRI plugin failed an event", extra={"fields": {"event": "StopContainer", "error": str(exc)}})
            return
        self._follow_up("StopContainer", [u for _, reply in replies for u in reply.update], [])

    async def remove_container(self, record: ContainerRecord) -> None:
        try:
            if self._relaying:
                await self.stop_container(record)
                await self._container_event(nri.REMOVE_CONTAINER, "RemoveContainer", record)
        finally:  # also when the plugins that heard of its stop are gone
            self._container_stops.pop(record.id, None)

    # ---- helpers ----

    async def _container_event(self, event: int, method: str, record: ContainerRecord) -> None:
        if not self._relaying:
            return
        request_type = getattr(nri, f"{method}Request")
        request = request_type(pod=self._pod_of(record), container=await self._container(record))
        await self._notify(event, method, request, getattr(nri, f"{method}Response"))

    async def _notify(self, event: int, method: str, request: Any, reply: Any) -> None:
        """An event whose failure is only logged."""
        try:
            await self.adaptation.dispatch(event, method, request, reply)
        except PluginFailed as exc:
            log.warning("NRI plugin failed an event", extra={"fields": {"event": method, "error": str(exc)}})

    def _pod_of(self, record: ContainerRecord) -> nri.PodSandbox:
        pod = self._state.sandbox(record.sandbox_id)
        return convert.pod_sandbox(pod) if pod is not None else nri.PodSandbox(id=record.sandbox_id)

    async def _container(self, record: ContainerRecord) -> nri.Container:
        return convert.container(record, await asyncio.to_thread(self._read_spec, record.id))

    def _read_spec(self, container_id: str) -> dict[str, Any] | None:
        path: Path = self._containers_dir / container_id / "config.json"
        try:
            spec: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return spec

    async def _snapshot(self) -> tuple[list[nri.PodSandbox], list[nri.Container]]:
        pods = [convert.pod_sandbox(pod) for pod in self._state.sandboxes()]
        containers = [await self._container(record) for record in self._state.containers()]
        return pods, containers

    def _follow_up(
        self, event: str, updates: list[nri.ContainerUpdate], evictions: list[nri.ContainerEviction]
    ) -> None:
        """Carry out what an event's replies ask of containers, in a task of its own (see above)."""
        if updates or evictions:
            task = asyncio.ensure_future(self._apply(event, updates, evictions))
            self._follow_ups.add(task)
            task.add_done_callback(self._follow_ups.discard)

    async def _apply(
        self, event: str, updates: list[nri.ContainerUpdate], evictions: list[nri.ContainerEviction]
    ) -> None:
        if failed := await self._update_containers(event, updates, evictions):
            log.warning(
                "NRI container updates failed",
                extra={"fields": {"event": event, "containers": ",".join(u.container_id for u in failed)}},
            )

    async def _update_containers(
        self, source: str, updates: list[nri.ContainerUpdate], evictions: list[nri.ContainerEviction]
    ) -> list[nri.ContainerUpdate]:
        """Apply plugins' updates to containers and evict those they name; returns the updates that failed."""
        failed: list[nri.ContainerUpdate] = []
        assert self._actions is not None or not (updates or evictions), "NRI container actions not attached"
        for update in updates:
            record = self._state.container(update.container_id)
            try:
                if record is None:
                    raise LookupError(f"no container {update.container_id}")
                unsupported = [n for n in ("blockio_class", "rdt_class") if update.linux.resources.HasField(n)]
                if unsupported:
                    raise ValueError(f"pycri does not support {', '.join(unsupported)}")
                resources = convert.resources_to_cri(update.linux.resources, record.resources)
                assert self._actions is not None
                await self._actions.apply_plugin_update(record.id, resources)
            except Exception as exc:  # noqa: BLE001 - each failure is reported back to the plugin
                log.warning(
                    "NRI container update failed",
                    extra={"fields": {"source": source, "container": update.container_id, "error": str(exc)}},
                )
                if not update.ignore_failure:
                    failed.append(update)
        for eviction in evictions:
            log.info(
                "NRI plugin evicts a container",
                extra={"fields": {"source": source, "container": eviction.container_id, "reason": eviction.reason}},
            )
            try:
                assert self._actions is not None
                await self._actions.evict(eviction.container_id)
            except Exception as exc:  # noqa: BLE001 - logged; the other evictions go on
                log.warning(
                    "NRI eviction failed", extra={"fields": {"container": eviction.container_id, "error": str(exc)}}
                )
        return failed

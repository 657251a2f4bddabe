"""The NRI hooks inside the pod and container services, over the fake host with the test plugin
connected: plugins' updates and evictions never deadlock the call whose event asked for them,
an undone RunPodSandbox or CreateContainer is undone for the plugins too, and nothing is kept
for a container or pod after its removal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycri.api import api_pb2
from pycri.config import NriSection
from pycri.errors import RuntimeFailure
from pycri.nri.hooks import Nri
from pycri.nri.pb import api_pb2 as nri
from pycri.oci.driver import ContainerCreate
from pycri.oci.runtime import OciRuntimeError
from pycri.state import containers as container_states
from pycri.state.containers import ContainerState
from tests.support.daemon import remove_tree, short_tempdir
from tests.support.fakes import FakeNode, build
from tests.support.nri_plugin import RecordingPlugin

pytestmark = pytest.mark.unit

ALL_EVENTS = range(1, nri.LAST)
# Only a guard: a deadlocked call fails the test instead of hanging it.
DEADLOCK_GUARD_SECONDS = 20.0


def pod_config() -> api_pb2.PodSandboxConfig:
    metadata = api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="web-uid")
    return api_pb2.PodSandboxConfig(metadata=metadata, hostname="web")


def container_config(name: str) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image="busybox"), command=["sleep", "1d"]
    )


async def eventually(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), DEADLOCK_GUARD_SECONDS)


@dataclass
class Hosted:
    node: FakeNode
    nri: Nri
    runtime_updates: list[str]  # container ids, one per update the runtime was asked for

    async def plugin(self, plugin: RecordingPlugin) -> RecordingPlugin:
        await plugin.connect(self.nri.adaptation.settings.socket_path)
        await asyncio.wait_for(plugin.synchronized.wait(), DEADLOCK_GUARD_SECONDS)
        await eventually(lambda: plugin.name in [p.base for p in self.nri.adaptation.plugins])
        return plugin

    async def gone(self, plugin: RecordingPlugin) -> None:
        """The plugin disconnects, and pycri has dropped it."""
        plugin.close()
        await eventually(lambda: all(p.connection.closed.is_set() for p in self.nri.adaptation.plugins))
        request = nri.PostUpdateContainerRequest()
        await self.nri.adaptation.dispatch(
            nri.POST_UPDATE_CONTAINER, "PostUpdateContainer", request, nri.PostUpdateContainerResponse
        )
        assert not self.nri.adaptation.connected()

    async def running(self, sandbox_id: str, name: str) -> str:
        container_id = await self.node.containers.create(sandbox_id, container_config(name), pod_config())
        await self.node.containers.start(container_id)
        return container_id

    def state(self, container_id: str) -> ContainerState | None:
        record = self.node.state.container(container_id)
        return record.state if record is not None else None


@pytest.fixture
async def hosted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hosted]:
    base = short_tempdir("pycri-nri-hooks-")
    node = build(tmp_path)
    node.config.nri = NriSection(enable=True, socket_path=base / "nri.sock", plugin_path=base / "no-plugins")
    host = Nri(node.config, node.state, "test", 0)
    node.containers.ctx.nri = host
    node.sandboxes.ctx.nri = host
    host.attach(node.containers)
    updates: list[str] = []

    async def update(container_id: str, resources: Any) -> None:
        updates.append(container_id)

    monkeypatch.setattr(node.runtime, "update", update, raising=False)
    await host.start()
    yield Hosted(node, host, updates)
    await host.stop()
    node.db.close()
    remove_tree(base)


def _update(container_id: str, cpu_shares: int) -> nri.ContainerUpdate:
    update = nri.ContainerUpdate(container_id=container_id)
    update.linux.resources.cpu.shares.value = cpu_shares
    return update


async def _guarded(*calls: Any) -> None:
    await asyncio.wait_for(asyncio.gather(*calls), DEADLOCK_GUARD_SECONDS)


async def test_a_plugin_may_evict_the_container_whose_update_it_is_asked_about(hosted: Hosted) -> None:
    plugin = await hosted.plugin(RecordingPlugin("evictor", "10", events=ALL_EVENTS))
    sandbox_id = await hosted.node.sandboxes.run(pod_config(), "")
    container_id = await hosted.running(sandbox_id, "app")
    reply = nri.UpdateContainerResponse(evict=[nri.ContainerEviction(container_id=container_id, reason="test")])
    plugin.replies["UpdateContainer"] = reply

    await _guarded(hosted.node.containers.update_resources(container_id, api_pb2.LinuxContainerResources()))
    await hosted.nri.settle()

    assert hosted.state(container_id) is ContainerState.EXITED
    assert plugin.methods(container_id)[-3:] == ["UpdateContainer", "PostUpdateContainer", "StopContainer"]


async def test_updates_of_two_containers_whose_plugin_updates_each_other_both_finish(hosted: Hosted) -> None:
    plugin = await hosted.plugin(RecordingPlugin("crossing", "10", events=ALL_EVENTS))
    sandbox_id = await hosted.node.sandboxes.run(pod_config(), "")
    first = await hosted.running(sandbox_id, "first")
    second = await hosted.running(sandbox_id, "second")
    # Each container's update also updates the other one.
    plugin.replies["UpdateContainer"] = nri.UpdateContainerResponse(update=[_update(first, 300), _update(second, 300)])

    resources = api_pb2.LinuxContainerResources(cpu_shares=100)
    await _guarded(
        hosted.node.containers.update_resources(first, resources),
        hosted.node.containers.update_resources(second, resources),
    )
    await hosted.nri.settle()

    assert sorted(hosted.runtime_updates) == sorted([first, first, second, second])  # its own, then the other's
    for container_id in (first, second):
        record = hosted.node.state.container(container_id)
        assert record is not None and record.resources.cpu_shares == 300


async def test_a_plugin_may_update_a_container_from_the_stop_event_of_its_removal(hosted: Hosted) -> None:
    plugin = await hosted.plugin(RecordingPlugin("stopwatch", "10", events=ALL_EVENTS))
    sandbox_id = await hosted.node.sandboxes.run(pod_config(), "")
    container_id = await hosted.running(sandbox_id, "app")
    plugin.replies["StopContainer"] = nri.StopContainerResponse(update=[_update(container_id, 300)])

    await _guarded(hosted.node.containers.remove(container_id))  # StopContainer is relayed under its lock
    await hosted.nri.settle()

    assert hosted.node.state.container(container_id) is None
    assert plugin.methods(container_id)[-2:] == ["StopContainer", "RemoveContainer"]


async def test_evictions_and_updates_a_create_asks_for_are_carried_out(hosted: Hosted) -> None:
    plugin = await hosted.plugin(RecordingPlugin("creator", "10", events=ALL_EVENTS))
    sandbox_id = await hosted.node.sandboxes.run(pod_config(), "")
    evicted = await hosted.running(sandbox_id, "evicted")
    updated = await hosted.running(sandbox_id, "updated")
    plugin.replies["CreateContainer"] = nri.CreateContainerResponse(
        update=[_update(updated, 300)], evict=[nri.ContainerEviction(container_id=evicted, reason="room")]
    )

    await _guarded(hosted.running(sandbox_id, "new"))
    await hosted.nri.settle()

    assert hosted.state(evicted) is ContainerState.EXITED
    record = hosted.node.state.container(updated)
    assert record is not None and record.resources.cpu_shares == 300


async def test_a_pod_the_plugins_saw_run_but_not_committed_is_removed_for_them(
    hosted: Hosted, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = await hosted.plugin(RecordingPlugin("podwatch", "10", events=ALL_EVENTS))

    async def no_commit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeFailure("induced: the pod's row is not written")

    monkeypatch.setattr(hosted.node.state, "put_sandbox", no_commit)
    with pytest.raises(RuntimeFailure, match="induced"):
        await hosted.node.sandboxes.run(pod_config(), "")

    (pod_id,) = {call.pod_id for call in plugin.calls if call.method == "RunPodSandbox"}
    assert plugin.methods(pod_id=pod_id) == ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]
    assert hosted.node.rows("intents") == 0


async def test_a_failed_create_removes_the_cgroup_a_plugin_gave_the_container(
    hosted: Hosted, monkeypatch: pytest.MonkeyPatch
) -> None:
    adjust = nri.ContainerAdjustment()
    adjust.linux.cgroups_path = "/plugin/placed"
    reply = nri.CreateContainerResponse(adjust=adjust)
    plugin = await hosted.plugin(RecordingPlugin("placer", "10", events=ALL_EVENTS, replies={"CreateContainer": reply}))
    sandbox_id = await hosted.node.sandboxes.run(pod_config(), "")
    planned_paths: list[str] = []

    async def create_then_fail(request: ContainerCreate) -> None:
        # What recovery would undo, had pycri died while the runtime made the container.
        planned_paths.extend(
            container_states.from_plan(intent.plan["record"]).cgroups_path for intent in hosted.node.intents.pending()
        )
        raise OciRuntimeError("runc create: induced", "induced")

    monkeypatch.setattr(hosted.node.runtime, "create", create_then_fail)
    with pytest.raises(RuntimeFailure, match="induced"):
        await hosted.node.containers.create(sandbox_id, container_config("app"), pod_config())

    assert "CreateContainer" in plugin.methods()
    assert planned_paths == ["/plugin/placed"]
    assert "/plugin/placed" in hosted.node.cgroups.removed
    assert hosted.node.rows("intents") == 0


async def test_nothing_is_kept_for_a_removed_container_or_pod_once_the_plugins_left(hosted: Hosted) -> None:
    plugin = await hosted.plugin(RecordingPlugin("leaver", "10", events=ALL_EVENTS))
    sandbox_id = await hosted.node.sandboxes.run(pod_config(), "")
    container_id = await hosted.running(sandbox_id, "app")
    await hosted.node.sandboxes.stop(sandbox_id)  # relays the container's and the pod's stop
    assert "StopPodSandbox" in plugin.methods(pod_id=sandbox_id)
    await hosted.gone(plugin)

    await hosted.node.sandboxes.remove(sandbox_id)

    assert hosted.node.state.container(container_id) is None
    assert container_id not in hosted.nri._container_stops
    assert sandbox_id not in hosted.nri._stopped_pods

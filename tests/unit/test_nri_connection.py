"""An NRI connection and the plugin registry in one process, over real unix sockets: calls both
ways, refusals, timeouts, registration, synchronization, dispatch order and dropped plugins."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pycri.config import NriSection
from pycri.nri import ttrpc
from pycri.nri.adaptation import Adaptation, PluginFailed, RuntimeSide
from pycri.nri.connection import PLUGIN_END, Connection, ConnectionClosed
from pycri.nri.pb import api_pb2 as nri
from tests.support.daemon import remove_tree, short_tempdir
from tests.support.nri_plugin import RecordingPlugin

pytestmark = pytest.mark.unit


async def _pair() -> tuple[Connection, Connection, list[str]]:
    ours, theirs = socket.socketpair()
    served: list[str] = []

    async def runtime_serves(method: str, payload: bytes) -> bytes:
        served.append(method)
        if method == "RegisterPlugin":
            return nri.Empty().SerializeToString()
        raise ttrpc.CallFailed(ttrpc.Code.UNIMPLEMENTED, method)

    async def plugin_serves(method: str, payload: bytes) -> bytes:
        if method == "Configure":
            return nri.ConfigureResponse(events=3).SerializeToString()
        await asyncio.Event().wait()  # any other call hangs
        raise AssertionError("unreachable")

    runtime = Connection(*await asyncio.open_unix_connection(sock=ours), runtime_serves, "runtime")
    plugin = Connection(*await asyncio.open_unix_connection(sock=theirs), plugin_serves, "plugin", side=PLUGIN_END)
    runtime.start()
    plugin.start()
    return runtime, plugin, served


async def test_calls_go_both_ways_and_fail_as_they_should() -> None:
    runtime, plugin, served = await _pair()
    assert (await runtime.call("Configure", nri.ConfigureRequest(), nri.ConfigureResponse, 5)).events == 3
    await plugin.call("RegisterPlugin", nri.RegisterPluginRequest(plugin_name="x", plugin_idx="01"), nri.Empty, 5)
    assert served == ["RegisterPlugin"]
    with pytest.raises(ttrpc.CallFailed) as refused:
        await plugin.call("UpdateContainers", nri.UpdateContainersRequest(), nri.UpdateContainersResponse, 5)
    assert refused.value.code == ttrpc.Code.UNIMPLEMENTED
    with pytest.raises(TimeoutError):
        await runtime.call("Synchronize", nri.SynchronizeRequest(), nri.SynchronizeResponse, 0.05)
    pending = asyncio.ensure_future(runtime.call("Synchronize", nri.SynchronizeRequest(), nri.SynchronizeResponse, 5))
    await asyncio.sleep(0)
    plugin.close()
    with pytest.raises(ConnectionClosed):
        await pending
    await runtime.closed.wait()
    with pytest.raises(ConnectionClosed):
        await runtime.call("Configure", nri.ConfigureRequest(), nri.ConfigureResponse, 5)


async def test_garbage_from_the_peer_closes_the_connection() -> None:
    ours, theirs = socket.socketpair()

    async def never(method: str, payload: bytes) -> bytes:
        raise AssertionError(method)

    runtime = Connection(*await asyncio.open_unix_connection(sock=ours), never, "runtime")
    runtime.start()
    theirs.sendall(b"\x00\x00\x00\x02\xff\xff\xff\xff")  # a frame on channel 2 longer than allowed
    await asyncio.wait_for(runtime.closed.wait(), 5)
    theirs.close()


@pytest.fixture
async def registry() -> AsyncIterator[tuple[Adaptation, list[list[nri.ContainerUpdate]]]]:
    base = short_tempdir("pycri-nri-unit-")
    settings = NriSection(
        enable=True,
        socket_path=base / "nri.sock",
        plugin_path=base / "no-plugins",
        plugin_registration_timeout=0.5,
        plugin_request_timeout=0.5,
        required_plugins=["needed"],
    )
    updates: list[list[nri.ContainerUpdate]] = []

    async def snapshot() -> tuple[list[nri.PodSandbox], list[nri.Container]]:
        return [nri.PodSandbox(id="pod1")], [nri.Container(id="ctr1", pod_sandbox_id="pod1")]

    async def update_containers(
        source: str, update: list[nri.ContainerUpdate], evict: list[nri.ContainerEviction]
    ) -> list[nri.ContainerUpdate]:
        updates.append(update)
        return []

    adaptation = Adaptation(settings, RuntimeSide("pycri", "test", snapshot, update_containers))
    await adaptation.start()
    yield adaptation, updates
    await adaptation.stop()
    remove_tree(base)


async def _eventually(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5)


async def _joined(adaptation: Adaptation, plugin: RecordingPlugin) -> RecordingPlugin:
    await plugin.connect(adaptation.settings.socket_path)
    await asyncio.wait_for(plugin.synchronized.wait(), 5)
    # The registry adds it right after Synchronize is answered.
    await _eventually(lambda: plugin.name in [p.base for p in adaptation.plugins])
    return plugin


async def test_plugins_join_in_sync_and_are_called_in_index_order(
    registry: tuple[Adaptation, list[list[nri.ContainerUpdate]]],
) -> None:
    adaptation, _ = registry
    late = await _joined(adaptation, RecordingPlugin("needed", "20", events=[nri.RUN_POD_SANDBOX]))
    early = await _joined(adaptation, RecordingPlugin("early", "10", events=[nri.RUN_POD_SANDBOX]))
    sync = late.calls[1].request
    assert [p.id for p in sync.pods] == ["pod1"]  # type: ignore[attr-defined]
    assert [c.id for c in sync.containers] == ["ctr1"]  # type: ignore[attr-defined]
    assert adaptation.missing_required() == []
    replies = await adaptation.dispatch(
        nri.RUN_POD_SANDBOX, "RunPodSandbox", nri.RunPodSandboxRequest(pod=nri.PodSandbox(id="p")), nri.Empty
    )
    assert [plugin.name for plugin, _ in replies] == ["10-early", "20-needed"]
    unsubscribed = await adaptation.dispatch(
        nri.STOP_POD_SANDBOX, "StopPodSandbox", nri.StopPodSandboxRequest(), nri.Empty
    )
    assert unsubscribed == []
    early.fail["RunPodSandbox"] = "not this one"
    with pytest.raises(PluginFailed, match="10-early failed RunPodSandbox: not this one"):
        await adaptation.dispatch(nri.RUN_POD_SANDBOX, "RunPodSandbox", nri.RunPodSandboxRequest(), nri.Empty)
    late.close()
    early.close()


async def test_a_hanging_plugin_is_dropped_and_a_required_one_missed(
    registry: tuple[Adaptation, list[list[nri.ContainerUpdate]]],
) -> None:
    adaptation, _ = registry
    hanging = await _joined(
        adaptation, RecordingPlugin("needed", "30", events=[nri.CREATE_CONTAINER], hang={"CreateContainer"})
    )
    replies = await adaptation.dispatch(
        nri.CREATE_CONTAINER, "CreateContainer", nri.CreateContainerRequest(), nri.CreateContainerResponse
    )
    assert replies == []
    assert adaptation.plugins == []
    assert adaptation.missing_required() == ["needed"]
    assert hanging.connection is not None
    await asyncio.wait_for(hanging.connection.closed.wait(), 5)


async def test_bad_names_and_silent_plugins_are_not_admitted(
    registry: tuple[Adaptation, list[list[nri.ContainerUpdate]]],
) -> None:
    adaptation, _ = registry
    bad = RecordingPlugin("bad name!", "01")
    with pytest.raises(ttrpc.CallFailed) as refused:
        await bad.connect(adaptation.settings.socket_path)
    assert refused.value.code == ttrpc.Code.INVALID_ARGUMENT
    reader, writer = await asyncio.open_unix_connection(str(adaptation.settings.socket_path))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # registration timed out: pycri hung up
    writer.close()
    assert adaptation.plugins == []


async def test_synchronize_updates_are_applied(registry: tuple[Adaptation, list[list[nri.ContainerUpdate]]]) -> None:
    adaptation, updates = registry
    reply = nri.SynchronizeResponse(update=[nri.ContainerUpdate(container_id="ctr1")])
    plugin = await _joined(adaptation, RecordingPlugin("syncer", "40", replies={"Synchronize": reply}))
    await _eventually(lambda: bool(updates))
    assert [u.container_id for u in updates[0]] == ["ctr1"]
    plugin.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_socket_path_is_private_without_a_umask_other_work_sees(tmp_path: Path) -> None:
    seen: list[int] = []

    def other_work() -> None:
        seen.append(_umask())

    async def listen() -> int:
        settings = NriSection(enable=True, socket_path=tmp_path / "sub" / "nri.sock", plugin_path=tmp_path / "none")

        async def snapshot() -> tuple[list[nri.PodSandbox], list[nri.Container]]:
            return [], []

        async def update(
            source: str, u: list[nri.ContainerUpdate], e: list[nri.ContainerEviction]
        ) -> list[nri.ContainerUpdate]:
            return []

        adaptation = Adaptation(settings, RuntimeSide("pycri", "test", snapshot, update))
        asyncio.get_running_loop().call_soon(other_work)  # runs where the start first yields to the loop
        await adaptation.start()
        mode = settings.socket_path.stat().st_mode & 0o777
        await adaptation.stop()
        return mode

    assert asyncio.run(listen()) == 0o600
    assert seen == [_umask()]  # the socket's mask (0o177) was not the process's while the loop ran on

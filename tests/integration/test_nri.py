"""NRI plugins against a real daemon: registration, events in order, adjustments that reach
the container, a failing hook, a hanging plugin, unsolicited updates and evictions, and a
plugin pycri starts from its plugin dir. The plugin is tests/support/nri_plugin.py."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from pycri.api import api_pb2
from pycri.nri.pb import api_pb2 as nri
from tests.integration.test_sandbox_support import Node, running_node
from tests.support.busybox_images import TestImages
from tests.support.daemon import REPO, remove_tree, short_tempdir
from tests.support.nri_plugin import RecordingPlugin
from tests.support.pods import RPC_TIMEOUT, Workloads, container_config, shell, wait_until, workloads_on

pytestmark = pytest.mark.integration
T = TypeVar("T")
ALL_EVENTS = range(1, nri.LAST)
REQUEST_TIMEOUT = 1.0


class PluginLoop:
    """An event loop in a thread for the test plugins, while the test makes blocking CRI calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connect(self, plugin: RecordingPlugin, socket_path: Path) -> RecordingPlugin:
        async def connect() -> None:
            plugin.synchronized = asyncio.Event()
            await plugin.connect(socket_path)
            await asyncio.wait_for(plugin.synchronized.wait(), 10)

        self.run(connect())
        return plugin

    def close(self, plugin: RecordingPlugin) -> None:
        self.loop.call_soon_threadsafe(plugin.close)

    def stop(self) -> None:
        async def cancel_the_rest() -> None:
            current = asyncio.current_task()
            rest = [task for task in asyncio.all_tasks() if task is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@pytest.fixture(scope="module")
def nri_dir() -> Iterator[Path]:
    base = short_tempdir("pycri-nri-")
    (base / "plugins").mkdir()
    launched = base / "plugins" / "10-launched"
    launched.write_text(
        f"#!/bin/sh\nexport NRI_TEST_RECORD={base / 'launched.record'}\n"
        f"cd {REPO}\nexec {sys.executable} -m tests.support.nri_plugin\n"
    )
    launched.chmod(0o755)
    yield base
    remove_tree(base)


@pytest.fixture(scope="module")
def node(test_images: TestImages, nri_dir: Path) -> Iterator[Node]:
    settings = {
        "runtime": {"pause_image": test_images.pause.reference},
        "nri": {
            "enable": True,
            "socket_path": str(nri_dir / "nri.sock"),
            "plugin_path": str(nri_dir / "plugins"),
            "plugin_config_path": str(nri_dir / "conf.d"),
            "plugin_request_timeout": REQUEST_TIMEOUT,
        },
    }
    with running_node(settings) as running:
        with workloads_on(running) as workloads:
            workloads.pull(test_images.busybox.reference)
        yield running


@pytest.fixture
def plugins() -> Iterator[PluginLoop]:
    loop = PluginLoop()
    yield loop
    loop.stop()


@pytest.fixture
def work(node: Node) -> Iterator[Workloads]:
    with workloads_on(node) as workloads:
        yield workloads


def socket_of(node: Node) -> Path:
    return Path(node.daemon.settings["nri"]["socket_path"])


def bundle_spec(work: Workloads, container_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((work.state_dir / "containers" / container_id / "config.json").read_text())
    return spec


def test_events_arrive_in_order_with_pod_and_container_metadata(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    plugin = plugins.connect(RecordingPlugin("order", "20", events=ALL_EVENTS), socket_of(node))
    try:
        pod = work.pod("nri-order")
        config = container_config("brief", test_images.busybox.reference, *shell("exit 3"))
        container_id = work.run(pod, config)
        work.wait_for_exit(container_id)
        wait_until(lambda: "StopContainer" in plugin.methods(container_id), "the StopContainer of an exit")
        work.remove(container_id)
        work.stop_pod(pod.id)
        work.stop_pod(pod.id)  # a second stop is no event
        work.remove_pod(pod.id)
    finally:
        plugins.close(plugin)
    assert plugin.methods(pod_id=pod.id) == [
        "RunPodSandbox",
        "CreateContainer",
        "ValidateContainerAdjustment",
        "PostCreateContainer",
        "StartContainer",
        "PostStartContainer",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ]
    run = plugin.calls[plugin.methods().index("RunPodSandbox")].request
    assert (run.pod.name, run.pod.namespace, run.pod.uid) == (  # type: ignore[attr-defined]
        pod.config.metadata.name,
        pod.config.metadata.namespace,
        pod.config.metadata.uid,
    )
    stop = next(c.request for c in plugin.calls if c.method == "StopContainer")
    assert stop.container.name == "brief"  # type: ignore[attr-defined]
    assert stop.container.exit_code == 3  # type: ignore[attr-defined]
    create = next(c.request for c in plugin.calls if c.method == "CreateContainer")
    assert list(create.container.args) == ["sh", "-c", "exit 3"]  # type: ignore[attr-defined]


def test_synchronize_brings_existing_pods_and_containers(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    pod = work.pod("nri-sync")
    container_id = work.run(pod, container_config("sleeper", test_images.busybox.reference, "sleep", "60"))
    plugin = plugins.connect(RecordingPlugin("late", "30", events=ALL_EVENTS), socket_of(node))
    try:
        sync = next(c.request for c in plugin.calls if c.method == "Synchronize")
        assert pod.id in [p.id for p in sync.pods]  # type: ignore[attr-defined]
        synced = {c.id: c for c in sync.containers}  # type: ignore[attr-defined]
        assert synced[container_id].state == nri.CONTAINER_RUNNING
        assert synced[container_id].pid > 0
        assert plugin.methods()[:2] == ["Configure", "Synchronize"]
    finally:
        plugins.close(plugin)


def test_adjustments_reach_the_containers_spec_and_process(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages, tmp_path: Path
) -> None:
    shared = tmp_path / "from-plugin"
    shared.mkdir()
    (shared / "note").write_text("mounted by a plugin\n")
    adjust = nri.ContainerAdjustment(
        annotations={"nri.test/adjusted": "yes"},
        env=[nri.KeyValue(key="FROM_PLUGIN", value="hello"), nri.KeyValue(key="-DROPPED")],
        mounts=[nri.Mount(destination="/plugin", type="bind", source=str(shared), options=["rbind", "ro"])],
        rlimits=[nri.POSIXRlimit(type="RLIMIT_NOFILE", hard=4096, soft=2048)],
    )
    adjust.linux.resources.memory.limit.value = 64 << 20
    reply = nri.CreateContainerResponse(adjust=adjust)
    plugin = plugins.connect(
        RecordingPlugin("adjuster", "40", events=[nri.CREATE_CONTAINER], replies={"CreateContainer": reply}),
        socket_of(node),
    )
    try:
        pod = work.pod("nri-adjust")
        config = container_config(
            "adjusted", test_images.busybox.reference, "sleep", "60", envs=[api_pb2.KeyValue(key="DROPPED", value=b"x")]
        )
        container_id = work.run(pod, config)
    finally:
        plugins.close(plugin)
    spec = bundle_spec(work, container_id)
    assert spec["annotations"]["nri.test/adjusted"] == "yes"
    assert spec["linux"]["resources"]["memory"]["limit"] == 64 << 20
    env = work.output(container_id, "env")
    assert "FROM_PLUGIN=hello" in env.splitlines()
    assert "DROPPED=" not in env
    assert work.output(container_id, "cat", "/plugin/note") == "mounted by a plugin\n"
    assert work.output(container_id, "sh", "-c", "ulimit -n").strip() == "2048"


def test_validator_sees_adjustments_with_their_owners_and_may_reject(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    adjust = nri.ContainerAdjustment(env=[nri.KeyValue(key="OWNED", value="1")])
    adjuster = plugins.connect(
        RecordingPlugin(
            "owner",
            "41",
            events=[nri.CREATE_CONTAINER],
            replies={"CreateContainer": nri.CreateContainerResponse(adjust=adjust)},
        ),
        socket_of(node),
    )
    verdict = nri.ValidateContainerAdjustmentResponse(reject=True, reason="OWNED is not allowed")
    validator = plugins.connect(
        RecordingPlugin(
            "validator",
            "90",
            events=[nri.VALIDATE_CONTAINER_ADJUSTMENT],
            replies={"ValidateContainerAdjustment": verdict},
        ),
        socket_of(node),
    )
    try:
        pod = work.pod("nri-validated")
        with pytest.raises(grpc.RpcError) as rejected:
            work.create(pod, container_config("validated", test_images.busybox.reference, "sleep", "60"))
        assert "OWNED is not allowed" in str(rejected.value.details())
        assert work.list(pod_sandbox_id=pod.id) == []
        request = next(c.request for c in validator.calls if c.method == "ValidateContainerAdjustment")
        assert [kv.key for kv in request.adjust.env] == ["OWNED"]  # type: ignore[attr-defined]
        (owners,) = request.owners.owners.values()  # type: ignore[attr-defined]
        assert owners.compound[nri.Env].owners["OWNED"] == "41-owner"
        assert ("41", "owner") in [(p.index, p.name) for p in request.plugins]  # type: ignore[attr-defined]
        assert "OWNED=1" not in request.container.env  # type: ignore[attr-defined]
    finally:
        plugins.close(adjuster)
        plugins.close(validator)


def test_pod_resource_updates_reach_the_plugins(node: Node, work: Workloads, plugins: PluginLoop) -> None:
    plugin = plugins.connect(RecordingPlugin("podwatch", "75", events=ALL_EVENTS), socket_of(node))
    try:
        pod = work.pod("nri-pod-update")
        resources = api_pb2.LinuxContainerResources(cpu_shares=300, memory_limit_in_bytes=256 << 20)
        work.runtime.UpdatePodSandboxResources(
            api_pb2.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod.id, resources=resources)
        )
    finally:
        plugins.close(plugin)
    assert plugin.methods(pod_id=pod.id) == ["RunPodSandbox", "UpdatePodSandbox", "PostUpdatePodSandbox"]
    update = next(c.request for c in plugin.calls if c.method == "UpdatePodSandbox")
    assert update.linux_resources.cpu.shares.value == 300  # type: ignore[attr-defined]
    assert update.linux_resources.memory.limit.value == 256 << 20  # type: ignore[attr-defined]


def test_failing_hook_fails_the_create_and_leaves_nothing(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    plugin = plugins.connect(
        RecordingPlugin("refuser", "45", events=ALL_EVENTS, fail={"CreateContainer": "induced failure"}),
        socket_of(node),
    )
    try:
        pod = work.pod("nri-refused")
        containers_before = set(work.container_dirs())
        with pytest.raises(grpc.RpcError) as refused:
            work.create(pod, container_config("refused", test_images.busybox.reference, "sleep", "60"))
        assert "induced failure" in str(refused.value.details())
        assert work.list(pod_sandbox_id=pod.id) == []
        assert set(work.container_dirs()) == containers_before
        plugin.fail.clear()
        container_id = work.create(pod, container_config("refused", test_images.busybox.reference, "sleep", "60"))
        assert work.status(container_id).state == api_pb2.CONTAINER_CREATED
        assert "StartContainer" not in plugin.methods()
    finally:
        plugins.close(plugin)


def test_failing_run_pod_sandbox_hook_fails_the_pod_and_leaves_nothing(
    node: Node, work: Workloads, plugins: PluginLoop
) -> None:
    plugin = plugins.connect(
        RecordingPlugin("podrefuser", "46", events=ALL_EVENTS, fail={"RunPodSandbox": "no pods today"}), socket_of(node)
    )
    try:
        config = work.pod_config("nri-refused-pod")
        with pytest.raises(grpc.RpcError) as refused:
            work.run_pod(config)
        assert "no pods today" in str(refused.value.details())
        assert work.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
        assert node.sandbox_dirs() == [] and node.sandbox_mounts() == []
        attempted = next(c.pod_id for c in plugin.calls if c.method == "RunPodSandbox")
        assert plugin.methods(pod_id=attempted) == ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]
        plugin.fail.clear()
        work.run_pod(config)
    finally:
        plugins.close(plugin)


def test_hanging_plugin_is_dropped_and_the_pod_runs(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    hanging = plugins.connect(
        RecordingPlugin("hanger", "05", events=ALL_EVENTS, hang={"RunPodSandbox"}), socket_of(node)
    )
    witness = plugins.connect(RecordingPlugin("witness", "60", events=ALL_EVENTS), socket_of(node))
    try:
        pod = work.pod("nri-hang")
        assert work.pod_status(pod.id).state == api_pb2.SANDBOX_READY
        assert plugins.run(_closed(hanging)), "pycri should have dropped the hanging plugin's connection"
        work.run(pod, container_config("after-hang", test_images.busybox.reference, "sleep", "60"))
        assert hanging.methods(pod_id=pod.id) == ["RunPodSandbox"]
        assert witness.methods(pod_id=pod.id)[:3] == ["RunPodSandbox", "CreateContainer", "ValidateContainerAdjustment"]
    finally:
        plugins.close(hanging)
        plugins.close(witness)


async def _closed(plugin: RecordingPlugin) -> bool:
    assert plugin.connection is not None
    await asyncio.wait_for(plugin.connection.closed.wait(), 10)
    return True


def test_unsolicited_update_and_eviction(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    plugin = plugins.connect(RecordingPlugin("updater", "70", events=ALL_EVENTS), socket_of(node))
    try:
        pod = work.pod("nri-update")
        kept = work.run(pod, container_config("kept", test_images.busybox.reference, "sleep", "60"))
        evicted = work.run(pod, container_config("evicted", test_images.busybox.reference, "sleep", "60"))
        update = nri.ContainerUpdate(container_id=kept)
        update.linux.resources.cpu.shares.value = 256
        missing = nri.ContainerUpdate(container_id="0" * 64)
        missing.linux.resources.cpu.shares.value = 256
        eviction = nri.ContainerEviction(container_id=evicted, reason="test eviction")
        failed = plugins.run(plugin.update_containers([update, missing], [eviction]))
        assert [f.container_id for f in failed] == ["0" * 64]
        assert work.status(kept).resources.linux.cpu_shares == 256
        assert work.status(evicted).state == api_pb2.CONTAINER_EXITED
        wait_until(lambda: "StopContainer" in plugin.methods(evicted), "the evicted container's StopContainer")
    finally:
        plugins.close(plugin)


def test_a_plugin_may_evict_the_container_whose_update_it_is_asked_about(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    plugin = plugins.connect(
        RecordingPlugin("selfevictor", "71", events=[nri.UPDATE_CONTAINER, nri.STOP_CONTAINER]), socket_of(node)
    )
    try:
        pod = work.pod("nri-evict-updated")
        container_id = work.run(pod, container_config("evicted", test_images.busybox.reference, "sleep", "60"))
        eviction = nri.ContainerEviction(container_id=container_id, reason="no room")
        plugin.replies["UpdateContainer"] = nri.UpdateContainerResponse(evict=[eviction])
        request = api_pb2.UpdateContainerResourcesRequest(
            container_id=container_id, linux=api_pb2.LinuxContainerResources(cpu_shares=512)
        )
        work.runtime.UpdateContainerResources(request, timeout=RPC_TIMEOUT)  # no deadlock on its own lock
        assert work.wait_for_exit(container_id).state == api_pb2.CONTAINER_EXITED
        wait_until(lambda: "StopContainer" in plugin.methods(container_id), "the evicted container's StopContainer")
        assert work.status(container_id).resources.linux.cpu_shares == 512
    finally:
        plugins.close(plugin)


def test_namespaces_of_a_pods_own_user_namespace_are_not_adjusted(
    node: Node, work: Workloads, plugins: PluginLoop, test_images: TestImages
) -> None:
    adjust = nri.ContainerAdjustment()
    adjust.linux.namespaces.add(type="network", path="/proc/1/ns/net")
    replies: dict[str, object] = {"CreateContainer": nri.CreateContainerResponse(adjust=adjust)}
    plugin = plugins.connect(
        RecordingPlugin("netswap", "47", events=[nri.CREATE_CONTAINER], replies=replies), socket_of(node)
    )
    node.base.chmod(0o711)  # the pod's root walks through it to its files
    try:
        config = work.pod_config("nri-userns")
        mapping = api_pb2.IDMapping(container_id=0, host_id=100000, length=65536)
        userns = api_pb2.UserNamespace(mode=api_pb2.NamespaceMode.POD, uids=[mapping], gids=[mapping])
        config.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
        pod = work.run_pod(config)
        container = container_config("hostnet", test_images.busybox.reference, "sleep", "60")
        container.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
        containers_before = set(work.container_dirs())
        with pytest.raises(grpc.RpcError) as refused:
            work.create(pod, container)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "plugin 47-netswap adjusts linux.namespaces 'network'" in str(refused.value.details())
        assert work.list(pod_sandbox_id=pod.id) == []
        assert set(work.container_dirs()) == containers_before
    finally:
        plugins.close(plugin)


def test_required_plugin_missing_fails_create(test_images: TestImages, tmp_path: Path) -> None:
    settings = {
        "runtime": {"pause_image": test_images.pause.reference},
        "nri": {"enable": True, "socket_path": str(tmp_path / "nri.sock"), "required_plugins": ["guardian"]},
    }
    with running_node(settings) as node, workloads_on(node) as work:
        work.pull(test_images.busybox.reference)
        pod = work.pod("nri-required")
        with pytest.raises(grpc.RpcError) as refused:
            work.create(pod, container_config("guarded", test_images.busybox.reference, "sleep", "60"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "guardian" in str(refused.value.details())


def test_plugin_from_the_plugin_dir_is_started_and_sees_events(
    node: Node, work: Workloads, nri_dir: Path, test_images: TestImages
) -> None:
    pod = work.pod("nri-launched")
    container_id = work.run(pod, container_config("seen", test_images.busybox.reference, "sleep", "60"))
    record = nri_dir / "launched.record"
    wait_until(lambda: record.exists() and container_id in record.read_text(), "the launched plugin's record")
    lines = record.read_text().splitlines()
    assert lines[:2] == ["Configure - -", "Synchronize - -"]
    assert f"CreateContainer {pod.id} {container_id}" in lines


def test_a_live_socket_of_another_runtime_is_left_alone(test_images: TestImages, tmp_path: Path) -> None:
    other = tmp_path / "nri.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(other))
        listener.listen()
        settings = {"runtime": {"pause_image": test_images.pause.reference}, "nri": {"socket_path": str(other)}}
        with running_node(settings) as node, workloads_on(node) as work:
            work.pull(test_images.busybox.reference)
            pod = work.pod("nri-foreign")
            work.run(pod, container_config("runs", test_images.busybox.reference, "sleep", "60"))
            assert "NRI socket not opened" in node.daemon.log_path.read_text()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(other))  # still the other runtime's socket, not removed at pycri's stop

"""The sandbox and container services over fake host managers: every state transition,
failure cleanup, and kubelet's retry, without root."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.errors import AlreadyExists, FailedPrecondition, NotFound, RuntimeFailure, Unavailable
from pycri.state.containers import ContainerState
from pycri.state.sandboxes import SandboxState
from tests.support.fakes import FakeNode, build

pytestmark = pytest.mark.unit


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    built = build(tmp_path)
    yield built
    built.db.close()


def pod_config(name: str = "web", attempt: int = 0, shared_pid: bool = False) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=f"{name}-uid", attempt=attempt),
        hostname=name,
    )
    pid = api_pb2.NamespaceMode.POD if shared_pid else api_pb2.NamespaceMode.CONTAINER
    config.linux.security_context.namespace_options.pid = pid
    return config


def container_config(name: str = "app") -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image="busybox"), command=["sleep", "1d"]
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until `check()` holds (the exit path crosses threads), failing after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_pod_runs_stops_and_is_removed(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    record = node.sandboxes.get(sandbox_id)
    assert record.state is SandboxState.READY and record.ips == ("10.88.0.2",)
    assert record.netns_path in node.namespaces.pinned and record.root_dir.is_dir()
    assert (node.rows("sandboxes"), node.rows("intents")) == (1, 0)

    await node.sandboxes.stop(sandbox_id)
    stopped = node.sandboxes.get(sandbox_id)
    assert stopped.state is SandboxState.NOTREADY and stopped.ips == ()
    assert node.network.attached == {} and node.namespaces.pinned == set()

    await node.sandboxes.remove(sandbox_id)
    assert node.sandboxes.find(sandbox_id) is None
    assert not record.root_dir.exists() and not record.state_dir.exists()
    assert node.cgroups.removed == [record.cgroup_parent]
    assert (node.rows("sandboxes"), node.rows("intents")) == (0, 0)


async def test_a_failed_network_setup_leaves_nothing(node: FakeNode) -> None:
    node.network.fail_add = "bridge: no such device"
    with pytest.raises(Unavailable, match="no such device"):
        await node.sandboxes.run(pod_config(), "")
    assert node.sandboxes.records() == [] and node.namespaces.pinned == set()
    assert list((node.config.root_dir / "sandboxes").iterdir()) == []
    assert (node.rows("sandboxes"), node.rows("intents")) == (0, 0)
    node.network.fail_add = None
    assert await node.sandboxes.run(pod_config(), "")  # the name is free again


async def test_a_reserved_pod_name_is_refused(node: FakeNode) -> None:
    await node.sandboxes.run(pod_config(), "")
    with pytest.raises(AlreadyExists, match="web_default_web-uid_0"):
        await node.sandboxes.run(pod_config(), "")
    assert len(node.sandboxes.records()) == 1


async def test_container_created_started_stopped_removed(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    container_id = await node.containers.create(sandbox_id, container_config(), pod_config())
    assert node.containers.get(container_id).state is ContainerState.CREATED
    assert node.images.metadata.leases[container_id] and node.rows("intents") == 0

    await node.containers.start(container_id)
    running = node.containers.get(container_id)
    assert running.state is ContainerState.RUNNING and running.started_at > 0
    with pytest.raises(FailedPrecondition, match="running, not created"):
        await node.containers.start(container_id)

    await node.containers.stop(container_id, 10)
    exited = node.containers.get(container_id)
    assert (exited.state, exited.exit_code, exited.reason) == (ContainerState.EXITED, 128 + 15, "Error")
    await node.containers.stop(container_id, 10)  # stopping again is fine

    await node.containers.remove(container_id)
    assert node.containers.find(container_id) is None
    assert container_id in node.runtime.deleted and container_id not in node.images.metadata.leases
    assert not (node.config.root_dir / "containers" / container_id).exists()
    assert (node.rows("containers"), node.rows("intents")) == (0, 0)


async def test_a_failed_create_leaves_nothing(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    node.runtime.fail_create = "exec: sleep: not found"
    with pytest.raises(RuntimeFailure, match="not found"):
        await node.containers.create(sandbox_id, container_config(), pod_config())
    assert node.containers.in_sandbox(sandbox_id) == [] and node.images.metadata.leases == {}
    assert list((node.config.root_dir / "containers").iterdir()) == []
    assert list((node.config.state_dir / "containers").iterdir()) == []
    assert (node.rows("containers"), node.rows("intents")) == (0, 0)
    node.runtime.fail_create = None
    assert await node.containers.create(sandbox_id, container_config(), pod_config())


async def test_an_exit_is_pushed_to_the_store(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    container_id = await node.containers.create(sandbox_id, container_config(), pod_config())
    await node.containers.start(container_id)
    node.runtime.exit(container_id, 0)
    await eventually(lambda: node.containers.get(container_id).state is ContainerState.EXITED)
    done = node.containers.get(container_id)
    assert (done.state, done.exit_code, done.reason) == (ContainerState.EXITED, 0, "Completed")
    assert node.db.query("SELECT state FROM containers")[0]["state"] == "exited"


async def test_creating_in_a_stopped_pod_is_refused(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    await node.sandboxes.stop(sandbox_id)
    with pytest.raises(FailedPrecondition, match="not ready"):
        await node.containers.create(sandbox_id, container_config(), pod_config())


async def test_stopping_a_pod_stops_its_containers_and_removing_removes_them(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    ids = [await node.containers.create(sandbox_id, container_config(n), pod_config()) for n in ("a", "b")]
    for container_id in ids:
        await node.containers.start(container_id)
    await node.sandboxes.stop(sandbox_id)
    assert [node.containers.get(i).state for i in ids] == [ContainerState.EXITED] * 2
    await node.sandboxes.remove(sandbox_id)
    assert [node.containers.find(i) for i in ids] == [None, None]
    assert (node.rows("containers"), node.rows("sandboxes"), node.rows("intents")) == (0, 0, 0)


async def test_kubelets_retry_after_a_timeout_gets_the_pod_it_asked_for(node: FakeNode) -> None:
    node.network.add_gate = asyncio.Event()
    first = asyncio.ensure_future(node.sandboxes.run(pod_config(), ""))
    await settle()
    first.cancel()  # kubelet's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = asyncio.ensure_future(node.sandboxes.run(pod_config(), ""))
    await settle()
    node.network.add_gate.set()
    sandbox_id = await retry
    assert [r.id for r in node.sandboxes.records()] == [sandbox_id]


async def test_a_pod_sharing_its_pid_namespace_gets_a_pause_process(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(shared_pid=True), "")
    record = node.sandboxes.get(sandbox_id)
    assert record.pause_pid and record.pause_start_time and node.images.metadata.leases[sandbox_id]
    node.runtime.exit(sandbox_id, 137)  # the pause process dies on its own
    await eventually(lambda: not node.sandboxes.get(sandbox_id).ready)
    assert node.sandboxes.get(sandbox_id).state is SandboxState.NOTREADY
    await node.sandboxes.remove(sandbox_id)
    assert node.images.metadata.leases == {} and node.runtime.status == {}


async def test_a_debug_container_joins_its_targets_pid_namespace(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    target_id = await node.containers.create(sandbox_id, container_config("app"), pod_config())
    debug = container_config("debugger")
    options = debug.linux.security_context.namespace_options
    options.pid, options.target_id = api_pb2.NamespaceMode.TARGET, target_id
    with pytest.raises(FailedPrecondition, match="is not running"):
        await node.containers.create(sandbox_id, debug, pod_config())
    await node.containers.start(target_id)
    debug_id = await node.containers.create(sandbox_id, debug, pod_config())
    spec = json.loads((node.config.state_dir / "containers" / debug_id / "config.json").read_text())
    pid = node.containers.get(target_id).pid
    assert {"type": "pid", "path": f"/proc/{pid}/ns/pid"} in spec["linux"]["namespaces"]
    options.target_id = "f" * 64
    options.pid = api_pb2.NamespaceMode.TARGET
    debug.metadata.attempt = 1
    with pytest.raises(NotFound, match="is no container of pod sandbox"):
        await node.containers.create(sandbox_id, debug, pod_config())


async def test_the_serialised_list_is_the_list(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    ids = [await node.containers.create(sandbox_id, container_config(n), pod_config()) for n in ("a", "b", "c")]
    await node.containers.start(ids[1])
    running = api_pb2.ContainerStateValue(state=api_pb2.ContainerState.CONTAINER_RUNNING)
    for wanted in (
        api_pb2.ContainerFilter(),
        api_pb2.ContainerFilter(id=ids[2][:12]),
        api_pb2.ContainerFilter(pod_sandbox_id=sandbox_id),
        api_pb2.ContainerFilter(state=running),
        api_pb2.ContainerFilter(id="no-such-container"),
    ):
        expected = api_pb2.ListContainersResponse(containers=node.containers.list(wanted))
        assert api_pb2.ListContainersResponse.FromString(node.containers.list_reply(wanted)) == expected
    await node.containers.start(ids[0])  # a changed record is encoded again
    reply = api_pb2.ListContainersResponse.FromString(
        node.containers.list_reply(api_pb2.ContainerFilter(state=running))
    )
    assert {c.id for c in reply.containers} == {ids[0], ids[1]}

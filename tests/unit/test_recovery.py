"""Recovery at start, over fake host managers: every intent a crash can leave, exits that
happened while pycri was down, and a reboot."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycri.container.checkpoint import INTENT as CHECKPOINT_INTENT
from pycri.container.checkpoint import CheckpointFiles
from pycri.container.checkpoint_archive import partial_archive
from pycri.container.create import INTENT as CREATE_INTENT
from pycri.container.lifecycle import REMOVE_INTENT, START_INTENT
from pycri.oci.runtime import ContainerStatus
from pycri.recovery.start import BOOT_ID_FACT, recover
from pycri.sandbox.service import REMOVE_INTENT as REMOVE_POD_INTENT
from pycri.sandbox.service import RUN_INTENT, STOP_INTENT
from pycri.state import containers, sandboxes
from pycri.state.containers import ContainerState
from pycri.state.intents import Intent
from pycri.state.sandboxes import SandboxState
from tests.support.fakes import FakeNode, build
from tests.unit.test_services import container_config, pod_config

pytestmark = pytest.mark.unit


async def no_image_intents(pending: list[Intent]) -> None:
    assert pending == []


async def restart(node: FakeNode, base: Path) -> FakeNode:
    """pycri dies (nothing of its memory survives) and starts again on the same host."""
    node.db.close()
    again = build(base, node.host)
    await recover(again.containers, again.sandboxes, again.intents, no_image_intents)
    return again


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    built = build(tmp_path)
    await recover(built.containers, built.sandboxes, built.intents, no_image_intents)
    yield built


async def running_container(node: FakeNode) -> tuple[str, str]:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    container_id = await node.containers.create(sandbox_id, container_config(), pod_config())
    await node.containers.start(container_id)
    return sandbox_id, container_id


async def test_an_unfinished_run_is_undone(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    record = node.sandboxes.get(sandbox_id)
    # As if the crash came after the network was attached, before the commit.
    await node.state.delete_sandbox(sandbox_id)
    await node.intents.begin(RUN_INTENT, sandbox_id, {"record": sandboxes.to_plan(record), "made_log_directory": True})
    again = await restart(node, tmp_path)
    assert again.sandboxes.records() == [] and again.rows("intents") == 0
    assert again.network.attached == {} and again.namespaces.pinned == set()
    assert not record.root_dir.exists() and not record.state_dir.exists()
    assert not Path(record.log_directory).exists()
    assert again.cgroups.removed == [record.cgroup_parent]


async def test_an_unfinished_create_is_undone(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    container_id = await node.containers.create(sandbox_id, container_config(), pod_config())
    record = node.containers.get(container_id)
    await node.state.delete_container(record)
    await node.intents.begin(CREATE_INTENT, container_id, {"record": containers.to_plan(record)})
    again = await restart(node, tmp_path)
    assert again.containers.find(container_id) is None and again.rows("intents") == 0
    assert container_id in again.runtime.deleted and container_id not in again.images.metadata.leases
    assert not (again.config.root_dir / "containers" / container_id).exists()
    assert again.sandboxes.get(sandbox_id).ready  # the pod is untouched


async def test_a_start_whose_reply_was_lost_is_running(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    container_id = await node.containers.create(sandbox_id, container_config(), pod_config())
    record = node.containers.get(container_id)
    await node.intents.begin(START_INTENT, container_id, {"record": containers.to_plan(record)})
    node.runtime.status[container_id] = ContainerStatus.RUNNING  # runc did start it
    again = await restart(node, tmp_path)
    assert again.containers.get(container_id).state is ContainerState.RUNNING and again.rows("intents") == 0


async def test_an_unfinished_container_removal_is_finished(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id, container_id = await running_container(node)
    await node.containers.stop(container_id, 0)
    record = node.containers.get(container_id)
    await node.intents.begin(REMOVE_INTENT, container_id, {"record": containers.to_plan(record)})
    again = await restart(node, tmp_path)
    assert again.containers.find(container_id) is None and again.rows("intents") == 0
    assert container_id in again.runtime.deleted


async def test_an_unfinished_pod_stop_is_finished(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id, container_id = await running_container(node)
    record = node.sandboxes.get(sandbox_id)
    await node.intents.begin(STOP_INTENT, sandbox_id, {"record": sandboxes.to_plan(record)})
    again = await restart(node, tmp_path)
    assert again.sandboxes.get(sandbox_id).state is SandboxState.NOTREADY
    assert again.containers.get(container_id).state is ContainerState.EXITED
    assert again.network.attached == {} and again.rows("intents") == 0


async def test_an_unfinished_pod_removal_is_finished(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id, container_id = await running_container(node)
    record = node.sandboxes.get(sandbox_id)
    await node.intents.begin(REMOVE_POD_INTENT, sandbox_id, {"record": sandboxes.to_plan(record)})
    again = await restart(node, tmp_path)
    assert again.sandboxes.find(sandbox_id) is None and again.containers.find(container_id) is None
    assert (again.rows("sandboxes"), again.rows("containers"), again.rows("intents")) == (0, 0, 0)


async def test_a_container_left_paused_runs_on(node: FakeNode, tmp_path: Path) -> None:
    _, container_id = await running_container(node)
    node.runtime.status[container_id] = ContainerStatus.PAUSED  # pycri died while CRIU dumped it
    again = await restart(node, tmp_path)
    assert again.runtime.status[container_id] is ContainerStatus.RUNNING
    assert again.containers.get(container_id).state is ContainerState.RUNNING


async def test_an_unfinished_checkpoint_leaves_no_files_and_a_running_container(node: FakeNode, tmp_path: Path) -> None:
    _, container_id = await running_container(node)
    files = CheckpointFiles(
        node.config.root_dir / "containers" / container_id / "checkpoint-1a2b",
        partial_archive(tmp_path / "app.tar", "1a2b"),
    )
    (files.staging / "checkpoint").mkdir(parents=True)
    (files.staging / "checkpoint" / "pages-1.img").write_bytes(b"\0" * 64)
    files.partial.write_bytes(b"half an archive")
    await node.intents.begin(CHECKPOINT_INTENT, container_id, files.to_plan())
    node.runtime.status[container_id] = ContainerStatus.PAUSED
    again = await restart(node, tmp_path)
    assert not files.staging.exists() and not files.partial.exists() and again.rows("intents") == 0
    assert again.runtime.status[container_id] is ContainerStatus.RUNNING
    assert (node.config.root_dir / "containers" / container_id).is_dir()  # the container's own dirs stay


async def test_an_exit_while_pycri_was_down_is_taken_in(node: FakeNode, tmp_path: Path) -> None:
    _, container_id = await running_container(node)
    node.runtime.on_exit = None  # nobody is watching: pycri is down
    node.runtime.exit(container_id, 3)
    again = await restart(node, tmp_path)
    done = again.containers.get(container_id)
    assert (done.state, done.exit_code, done.reason) == (ContainerState.EXITED, 3, "Error")


async def test_a_process_gone_without_a_word_is_exited(node: FakeNode, tmp_path: Path) -> None:
    _, container_id = await running_container(node)
    node.runtime.on_exit = None
    node.runtime.exit(container_id, 0)
    node.runtime.exits.clear()  # conmon died too: no exit file
    node.runtime.status.pop(container_id)
    again = await restart(node, tmp_path)
    done = again.containers.get(container_id)
    assert (done.state, done.exit_code, done.reason) == (ContainerState.EXITED, 255, "Error")
    assert "no exit status" in done.message


async def test_after_a_reboot_nothing_is_trusted_to_run(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id, container_id = await running_container(node)
    await node.state.write_node_fact(BOOT_ID_FACT, "an-earlier-boot")
    again = await restart(node, tmp_path)
    assert again.sandboxes.get(sandbox_id).state is SandboxState.NOTREADY
    done = again.containers.get(container_id)
    assert (done.state, done.reason) == (ContainerState.EXITED, "Unknown") and "rebooted" in done.message
    await again.sandboxes.remove(sandbox_id)  # kubelet's clean-up goes through at once
    assert again.sandboxes.records() == []


async def test_a_pause_pid_now_held_by_another_process_is_not_trusted(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(shared_pid=True), "")
    record = node.sandboxes.get(sandbox_id)
    # Same PID, another start time: what a reused PID looks like.
    forged = dataclasses.replace(record, pause_start_time=(record.pause_start_time or 0) + 1)
    await node.state.put_sandbox(forged)
    again = await restart(node, tmp_path)
    assert again.sandboxes.get(sandbox_id).state is SandboxState.NOTREADY


async def test_recovery_leaves_a_healthy_node_alone(node: FakeNode, tmp_path: Path) -> None:
    sandbox_id, container_id = await running_container(node)
    again = await restart(node, tmp_path)
    assert again.sandboxes.get(sandbox_id).ready
    assert again.containers.get(container_id).state is ContainerState.RUNNING
    assert again.images.metadata.leases.keys() == {container_id}

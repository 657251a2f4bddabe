"""The in-memory store and its one write path: persist first, then memory, then the event."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.state import containers, sandboxes
from pycri.state.containers import ContainerRecord, ContainerState, ProcessUser
from pycri.state.intents import IntentLog
from pycri.state.memory import StateStore
from pycri.state.sandboxes import SandboxRecord, SandboxState
from pycri.state.store import Store

pytestmark = pytest.mark.unit


def pod(root: Path, sandbox_id: str = "a" * 64, attempt: int = 0) -> SandboxRecord:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="uid-1", attempt=attempt),
        labels={"app": "web"},
    )
    return SandboxRecord(
        id=sandbox_id,
        config=config,
        runtime_handler="runc",
        created_at=1_700_000_000_000_000_000 + attempt,
        state=SandboxState.READY,
        root_dir=root / "root" / sandbox_id,
        state_dir=root / "state" / sandbox_id,
        cgroup_parent=f"/pycri/pod-{sandbox_id}",
        log_directory="/var/log/pods/default_web_uid-1",
        netns_path=root / "state" / sandbox_id / "netns",
        ips=("10.85.0.2", "fd00::2"),
        cni_result={"cniVersion": "1.0.0"},
    )


def container(sandbox_id: str, container_id: str = "c" * 64) -> ContainerRecord:
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="app"), labels={"tier": "front"})
    return ContainerRecord(
        id=container_id,
        sandbox_id=sandbox_id,
        name="app_web_default_uid-1_0",
        config=config,
        image_id="sha256:" + "1" * 64,
        image_ref="busybox",
        state=ContainerState.CREATED,
        created_at=5,
        log_path="/var/log/pods/x/app.log",
        runtime_handler="runc",
        cgroups_path=f"/pycri/pod-{sandbox_id}/{container_id}",
        stop_signal=15,
        user=ProcessUser(1000, 1000, (5, 6)),
        pid=42,
        pid_start_time=99,
    )


@pytest.fixture
def db(tmp_path: Path) -> Store:
    return Store(tmp_path / "pycri.db")


def store_on(db: Store, tmp_path: Path) -> StateStore:
    return StateStore(db, tmp_path / "root", tmp_path / "state")


async def test_records_survive_a_reload_exactly(db: Store, tmp_path: Path) -> None:
    state = store_on(db, tmp_path)
    sandbox, ctr = pod(tmp_path), container("a" * 64)
    await state.put_sandbox(sandbox)
    await state.put_container(ctr)
    again = store_on(db, tmp_path)
    again.load()
    assert again.sandbox(sandbox.id) == sandbox
    assert again.container(ctr.id) == ctr
    assert again.containers_of(sandbox.id) == [ctr]


async def test_commit_finishes_the_intent_in_the_same_transaction(db: Store, tmp_path: Path) -> None:
    state, intents = store_on(db, tmp_path), IntentLog(db)
    sandbox = pod(tmp_path)
    intent = await intents.begin("run_pod_sandbox", sandbox.id, {"record": sandboxes.to_plan(sandbox)})
    assert [i.object_id for i in intents.pending()] == [sandbox.id]
    await state.put_sandbox(sandbox, finishes=intent)
    assert intents.pending() == []
    assert db.query("SELECT id FROM sandboxes")[0]["id"] == sandbox.id


async def test_plans_name_the_whole_record(tmp_path: Path) -> None:
    sandbox, ctr = (
        pod(tmp_path),
        dataclasses.replace(container("a" * 64), resources=api_pb2.LinuxContainerResources(cpu_shares=2)),
    )
    assert sandboxes.from_plan(sandboxes.to_plan(sandbox), tmp_path / "root", tmp_path / "state") == sandbox
    assert containers.from_plan(containers.to_plan(ctr)) == ctr


async def test_a_failed_write_changes_no_memory(db: Store, tmp_path: Path) -> None:
    state = store_on(db, tmp_path)
    ctr = container("a" * 64)  # its pod has no row: the foreign key refuses it
    with pytest.raises(Exception, match="FOREIGN KEY"):
        await state.put_container(ctr)
    assert state.container(ctr.id) is None


async def test_updates_apply_to_the_record_as_it_is_then(db: Store, tmp_path: Path) -> None:
    state = store_on(db, tmp_path)
    sandbox = pod(tmp_path)
    await state.put_sandbox(sandbox)
    ctr = await state.put_container(container(sandbox.id))
    started = state.update_container(ctr.id, lambda r: containers.started(r, 10))
    exited = state.update_container(ctr.id, lambda r: containers.exited(r, 3, 20))
    await asyncio.gather(started, exited)
    final = state.container(ctr.id)
    assert final is not None and final.state is ContainerState.EXITED
    assert (final.started_at, final.finished_at, final.exit_code, final.reason) == (10, 20, 3, "Error")


async def test_events_carry_the_pod_and_its_containers(db: Store, tmp_path: Path) -> None:
    state = store_on(db, tmp_path)
    state.pod_status = lambda r: api_pb2.PodSandboxStatus(id=r.id)
    state.container_status = lambda r: api_pb2.ContainerStatus(id=r.id, state=r.state.proto)
    sandbox = pod(tmp_path)
    await state.put_sandbox(sandbox)
    received: list[api_pb2.ContainerEventResponse] = []

    async def listen() -> None:
        async for event in state.events.subscribe():
            received.append(event)
            if len(received) == 2:
                return

    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0)
    ctr = await state.put_container(container(sandbox.id), event=api_pb2.ContainerEventType.CONTAINER_CREATED_EVENT)
    await state.delete_container(ctr)
    await asyncio.wait_for(listener, 5)
    assert [e.container_event_type for e in received] == [
        api_pb2.ContainerEventType.CONTAINER_CREATED_EVENT,
        api_pb2.ContainerEventType.CONTAINER_DELETED_EVENT,
    ]
    assert received[0].pod_sandbox_status.id == sandbox.id
    assert [s.id for s in received[0].containers_statuses] == [ctr.id]


async def test_wait_exited_wakes_on_the_exit(db: Store, tmp_path: Path) -> None:
    state = store_on(db, tmp_path)
    sandbox = pod(tmp_path)
    await state.put_sandbox(sandbox)
    ctr = await state.put_container(containers.started(container(sandbox.id), 1))
    assert not await state.wait_exited(ctr.id, 0.01)
    waiter = asyncio.ensure_future(state.wait_exited(ctr.id, 30))
    await state.update_container(ctr.id, lambda r: containers.exited(r, 0, 2))
    assert await waiter


async def test_removing_a_pod_removes_its_rows(db: Store, tmp_path: Path) -> None:
    state = store_on(db, tmp_path)
    sandbox = pod(tmp_path)
    await state.put_sandbox(sandbox)
    await state.put_container(container(sandbox.id))
    await state.delete_sandbox(sandbox.id)
    assert list(state.containers()) == [] and list(state.sandboxes()) == []
    assert db.query("SELECT count(*) FROM containers")[0][0] == 0

"""Sandbox rows in the store, and id prefixes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.ids import AmbiguousId, resolve_id
from pycri.sandbox.metadata import SandboxRecord, SandboxRows, SandboxState
from pycri.state.store import Store

pytestmark = pytest.mark.unit


def record(root: Path, sandbox_id: str, attempt: int = 0) -> SandboxRecord:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="uid-1", attempt=attempt),
        labels={"app": "web"},
    )
    return SandboxRecord(
        id=sandbox_id,
        config=config,
        runtime_handler="runc",
        created_at=1_700_000_000_000_000_000 + attempt,
        state=SandboxState.CREATING,
        root_dir=root / "root" / sandbox_id,
        state_dir=root / "state" / sandbox_id,
        cgroup_parent=f"/pycri/pod-{sandbox_id}",
        log_directory="/var/log/pods/default_web_uid-1",
        netns_path=root / "state" / sandbox_id / "netns",
        ipc_path=root / "state" / sandbox_id / "ipc",
        uts_path=root / "state" / sandbox_id / "uts",
        shm_path=root / "state" / sandbox_id / "shm",
    )


def test_rows_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "pycri.db")
    rows = SandboxRows(store, tmp_path / "root", tmp_path / "state")
    first, second = record(tmp_path, "a" * 64), record(tmp_path, "b" * 64, attempt=1)
    second.netns_path = second.ipc_path = second.uts_path = second.shm_path = None
    rows.insert(first)
    rows.insert(second)
    first.state, first.ips, first.cni_result = SandboxState.READY, ("10.85.0.2", "fd00::2"), {"cniVersion": "1.0.0"}
    rows.update(first)

    loaded = {r.id: r for r in rows.load_all()}
    assert loaded[first.id] == first
    assert loaded[second.id] == second
    assert loaded[first.id].name == "web_default_uid-1_0"
    assert loaded[second.id].sandbox_paths().shm == Path("/dev/shm")

    rows.delete(first.id)
    assert [r.id for r in rows.load_all()] == [second.id]
    store.close()


def test_reserved_names_are_unique_in_the_table(tmp_path: Path) -> None:
    store = Store(tmp_path / "pycri.db")
    rows = SandboxRows(store, tmp_path / "root", tmp_path / "state")
    rows.insert(record(tmp_path, "a" * 64))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        rows.insert(record(tmp_path, "c" * 64))
    store.close()


def test_sandbox_paths_for_a_shared_pid_namespace(tmp_path: Path) -> None:
    sandbox = record(tmp_path, "a" * 64)
    assert sandbox.sandbox_paths().pid is None
    sandbox.pause_pid = 4242
    paths = sandbox.sandbox_paths()
    assert paths.pid == Path("/proc/4242/ns/pid")
    assert paths.netns == sandbox.netns_path and paths.shm == sandbox.shm_path
    assert paths.resolv_conf == sandbox.root_dir / "resolv.conf"


def test_resolve_id() -> None:
    ids = ["abc123", "abd456", "f00"]
    assert resolve_id("abc", ids) == "abc123"
    assert resolve_id("f00", ids) == "f00"
    assert resolve_id("zzz", ids) is None
    with pytest.raises(AmbiguousId, match="matches 2"):
        resolve_id("ab", ids)


def test_exact_id_wins_over_longer_ids() -> None:
    assert resolve_id("ab", ["ab", "abc"]) == "ab"


@given(st.lists(st.text(alphabet="0123456789abcdef", min_size=1, max_size=6), unique=True), st.text(max_size=4))
def test_resolve_id_finds_only_ids_with_the_prefix(ids: list[str], prefix: str) -> None:
    try:
        found = resolve_id(prefix, ids)
    except AmbiguousId:
        assert sum(i.startswith(prefix) for i in ids) > 1
        return
    if found is None:
        assert not any(i.startswith(prefix) for i in ids)
    else:
        assert found.startswith(prefix) and found in ids

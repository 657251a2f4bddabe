import sqlite3
from pathlib import Path

import pytest

from pycri.state.schema import MIGRATIONS
from pycri.state.store import Store, StoreError

pytestmark = pytest.mark.unit


def test_new_database_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "pycri.db")
    assert store.schema_version == len(MIGRATIONS)
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    store.close()


def test_reopening_keeps_data(tmp_path: Path) -> None:
    store = Store(tmp_path / "pycri.db")
    store.execute("INSERT INTO snapshot_leases (owner, chain_id) VALUES ('c1', 'sha256:aa')")
    store.close()
    again = Store(tmp_path / "pycri.db")
    assert [tuple(r) for r in again.query("SELECT owner, chain_id FROM snapshot_leases")] == [("c1", "sha256:aa")]
    again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pycri.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        Store(path)


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "pycri.db")
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("INSERT INTO snapshot_leases (owner, chain_id) VALUES ('c1', 'x')")
        raise RuntimeError("half-way")
    assert store.query("SELECT * FROM snapshot_leases") == []
    store.close()

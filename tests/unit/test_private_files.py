"""Files pycri makes are born owner-only: the database (it holds container environments) and the socket."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from pycri.server.app import SOCKET_MODE, SOCKET_UMASK
from pycri.state.store import Store
from pycri.unix_socket import file_creation_mask


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_socket_bound_under_the_socket_umask_has_the_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "test.sock"
    before = os.umask(0o022)
    try:
        with file_creation_mask(SOCKET_UMASK), socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
            assert mode_of(path) == SOCKET_MODE
        assert os.umask(0o022) == 0o022, "the previous umask is back after the block"
    finally:
        os.umask(before)


def test_the_database_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "pycri.db")
    store.execute("PRAGMA user_version")
    for name in ("pycri.db", "pycri.db-wal", "pycri.db-shm"):
        assert mode_of(tmp_path / name) == 0o600, name
    store.close()


def test_a_database_an_older_pycri_left_readable_is_narrowed(tmp_path: Path) -> None:
    Store(tmp_path / "pycri.db").close()
    for name in ("pycri.db", "pycri.db-wal", "pycri.db-shm"):
        path = tmp_path / name
        if path.exists():
            path.chmod(0o644)
    Store(tmp_path / "pycri.db").close()
    for name in ("pycri.db", "pycri.db-wal", "pycri.db-shm"):
        path = tmp_path / name
        assert not path.exists() or mode_of(path) == 0o600, name

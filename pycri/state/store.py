"""The metadata store: one SQLite database in WAL mode under the root dir.

The schema carries a version (PRAGMA user_version); `MIGRATIONS[n]` takes a
database from version n to n+1, so an older database is upgraded in place at
start and a newer one (written by a later pycri) is refused.

At run time the daemon touches SQLite only through `write()`, which runs in the
one writer thread: the event loop never waits on a disk. The synchronous
`transaction()` and `query()` serve start-up loading and the offline CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pycri.state.schema import MIGRATIONS

T = TypeVar("T")
PRIVATE_DIR_MODE = 0o700

# The database holds container environments (secrets): owner only. SQLite gives the -wal and -shm
# files the mode of the database file.
DB_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class StoreError(RuntimeError):
    """The database cannot be used (newer schema, corrupt file)."""


class Store:
    """A thread-safe handle on pycri.db; callers on the event loop use it from threads
    for anything bigger than a single-row read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _restrict_db_files(path)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pycri-db")
        self.migrate()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        with self._lock:
            current = self.schema_version
            if current > len(MIGRATIONS):
                raise StoreError(f"{self.path} has schema version {current}; this pycri knows up to {len(MIGRATIONS)}")
            for version in range(current, len(MIGRATIONS)):
                with self.transaction() as db:
                    for statement in _statements(MIGRATIONS[version]):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    async def write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run `change(db)` in one transaction on the writer thread; durable when this returns.
        Shielded: a cancelled caller does not undo a write that is under way."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._writer, self._in_transaction, change))

    def _in_transaction(self, change: Callable[[sqlite3.Connection], T]) -> T:
        with self.transaction() as db:
            return change(db)

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        """Run one statement in its own transaction; returns the rows changed."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with self._lock:
            self._db.close()


def _statements(script: str) -> Iterator[str]:
    for chunk in script.split(";"):
        if chunk.strip():
            yield chunk


def _restrict_db_files(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it, and take group and other
    access off the files an older pycri left readable."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DB_FILE_MODE))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, DB_FILE_MODE)


def make_private_dir(path: Path) -> None:
    """`path` as a directory only root can enter; a dir an older pycri made searchable is narrowed.
    What lies below (the db, pods' /dev/shm, container files) is then out of other local users' reach."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    path.chmod(PRIVATE_DIR_MODE)

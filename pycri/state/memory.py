"""The in-memory store of pods and containers, and the one write path that changes them.

Every change is persisted first (one transaction on the store's writer thread, which may
also finish the operation's intent), then made in memory, then announced as a CRI
container event. Readers (List, Status, relist, stats) only ever see memory, and every
record they see is immutable: a change replaces the record, so nobody reads half of one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import TypeVar

from pycri.api import api_pb2
from pycri.state import containers, sandboxes
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.events import EventBus
from pycri.state.intents import Intent, delete_intent
from pycri.state.sandboxes import SandboxRecord
from pycri.state.store import Store

log = logging.getLogger(__name__)

Change = Callable[[sqlite3.Connection], object]
ContainerChange = Callable[[ContainerRecord], ContainerRecord]
SandboxChange = Callable[[SandboxRecord], SandboxRecord]
StatusOf = Callable[[SandboxRecord], api_pb2.PodSandboxStatus]
ContainerStatusOf = Callable[[ContainerRecord], api_pb2.ContainerStatus]
R = TypeVar("R", SandboxRecord, ContainerRecord)


class StateStore:
    def __init__(self, db: Store, sandbox_root: Path, sandbox_state: Path) -> None:
        self._db = db
        self._sandbox_root = sandbox_root
        self._sandbox_state = sandbox_state
        self._sandboxes: dict[str, SandboxRecord] = {}
        self._containers: dict[str, ContainerRecord] = {}
        self._by_sandbox: dict[str, dict[str, None]] = {}  # sandbox id -> its container ids, in creation order
        self._exited: dict[str, asyncio.Event] = {}
        # Changes to one record are applied one at a time, each to the record as it is then.
        self._record_locks: dict[str, asyncio.Lock] = {}
        self.events = EventBus()
        # Set by the services: how a pod and a container look in an event.
        self.pod_status: StatusOf | None = None
        self.container_status: ContainerStatusOf | None = None

    def load(self) -> None:
        """Read every pod and container; the only read of the database at run time."""
        for row in self._db.query("SELECT * FROM sandboxes ORDER BY created_at"):
            record = sandboxes.from_row(row, self._sandbox_root, self._sandbox_state)
            self._sandboxes[record.id] = record
            self._by_sandbox[record.id] = {}
        for row in self._db.query("SELECT * FROM containers ORDER BY created_at"):
            container = containers.from_row(row)
            self._containers[container.id] = container
            self._by_sandbox.setdefault(container.sandbox_id, {})[container.id] = None
        log.info(
            "state loaded", extra={"fields": {"sandboxes": len(self._sandboxes), "containers": len(self._containers)}}
        )

    # ---- reads ----

    def sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        return self._sandboxes.get(sandbox_id)

    def sandboxes(self) -> Iterable[SandboxRecord]:
        return self._sandboxes.values()

    def container(self, container_id: str) -> ContainerRecord | None:
        return self._containers.get(container_id)

    def containers(self) -> Iterable[ContainerRecord]:
        return self._containers.values()

    def sandbox_ids(self) -> Collection[str]:
        return self._sandboxes.keys()

    def container_ids(self) -> Collection[str]:
        return self._containers.keys()

    def containers_of(self, sandbox_id: str) -> list[ContainerRecord]:
        return [self._containers[i] for i in self._by_sandbox.get(sandbox_id, ())]

    # ---- the write path ----

    async def put_sandbox(self, record: SandboxRecord, finishes: Intent | None = None) -> SandboxRecord:
        sql, values = sandboxes.upsert_sql(record)
        await self._persist(lambda db: db.execute(sql, values), finishes)
        self._sandboxes[record.id] = record
        self._by_sandbox.setdefault(record.id, {})
        return record

    async def update_sandbox(
        self, sandbox_id: str, change: SandboxChange, finishes: Intent | None = None
    ) -> SandboxRecord | None:
        """Apply `change` to the pod as it is when its turn comes; None when the pod is gone."""
        return await self._update(
            sandbox_id, self._sandboxes.get, change, lambda record, _: self.put_sandbox(record, finishes), finishes
        )

    async def delete_sandbox(self, sandbox_id: str, finishes: Intent | None = None) -> None:
        def change(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM containers WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

        await self._persist(change, finishes)
        self._sandboxes.pop(sandbox_id, None)
        self._record_locks.pop(sandbox_id, None)
        for container_id in self._by_sandbox.pop(sandbox_id, {}):
            self._containers.pop(container_id, None)

    async def put_container(
        self, record: ContainerRecord, finishes: Intent | None = None, event: api_pb2.ContainerEventType | None = None
    ) -> ContainerRecord:
        sql, values = containers.upsert_sql(record)
        await self._persist(lambda db: db.execute(sql, values), finishes)
        self._containers[record.id] = record
        self._by_sandbox.setdefault(record.sandbox_id, {})[record.id] = None
        if record.state is ContainerState.EXITED and record.id in self._exited:
            self._exited.pop(record.id).set()
        if event is not None:
            self._emit(record, event)
        return record

    async def update_container(
        self,
        container_id: str,
        change: ContainerChange,
        finishes: Intent | None = None,
        event: api_pb2.ContainerEventType | None = None,
    ) -> ContainerRecord | None:
        """Apply `change` to the container as it is when its turn comes; None when it is gone.
        A change that leaves the record as it was writes nothing and announces nothing."""

        def put(record: ContainerRecord, changed: bool) -> Awaitable[ContainerRecord]:
            return self.put_container(record, finishes, event if changed else None)

        return await self._update(container_id, self._containers.get, change, put, finishes)

    async def _update(
        self,
        object_id: str,
        current_of: Callable[[str], R | None],
        change: Callable[[R], R],
        put: Callable[[R, bool], Awaitable[R]],
        finishes: Intent | None,
    ) -> R | None:
        async with self._record_lock(object_id):
            current = current_of(object_id)
            if current is None:
                if finishes is not None:
                    await self.finish(finishes)
                return None
            updated = change(current)
            if updated == current and finishes is None:
                return current
            return await put(updated, updated != current)

    def _record_lock(self, object_id: str) -> asyncio.Lock:
        return self._record_locks.setdefault(object_id, asyncio.Lock())

    async def delete_container(self, record: ContainerRecord, finishes: Intent | None = None) -> None:
        await self._persist(lambda db: db.execute("DELETE FROM containers WHERE id = ?", (record.id,)), finishes)
        self._containers.pop(record.id, None)
        self._record_locks.pop(record.id, None)
        self._by_sandbox.get(record.sandbox_id, {}).pop(record.id, None)
        self._emit(record, api_pb2.ContainerEventType.CONTAINER_DELETED_EVENT)

    async def finish(self, intent: Intent) -> None:
        """Finish an intent that changed no record (an undone or already-finished operation)."""
        await self._persist(None, intent)

    async def write_node_fact(self, key: str, value: str) -> None:
        await self._persist(
            lambda db: db.execute("INSERT OR REPLACE INTO node (key, value) VALUES (?, ?)", (key, value)), None
        )

    def node_fact(self, key: str) -> str | None:
        rows = self._db.query("SELECT value FROM node WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    async def _persist(self, change: Change | None, finishes: Intent | None) -> None:
        def transaction(db: sqlite3.Connection) -> None:
            if change is not None:
                change(db)
            if finishes is not None:
                delete_intent(db, finishes.object_id)

        await self._db.write(transaction)

    # ---- exits and events ----

    async def wait_exited(self, container_id: str, timeout: float) -> bool:
        """True once the container is EXITED (or gone), False when `timeout` passes first."""
        record = self._containers.get(container_id)
        if record is None or record.state is ContainerState.EXITED:
            return True
        event = self._exited.setdefault(container_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _emit(self, record: ContainerRecord, kind: api_pb2.ContainerEventType) -> None:
        if not self.events.has_subscribers():
            return
        event = api_pb2.ContainerEventResponse(
            container_id=record.id, container_event_type=kind, created_at=time.time_ns()
        )
        pod = self._sandboxes.get(record.sandbox_id)
        if pod is not None and self.pod_status is not None:
            event.pod_sandbox_status.CopyFrom(self.pod_status(pod))
        if self.container_status is not None:
            event.containers_statuses.extend(self.container_status(c) for c in self.containers_of(record.sandbox_id))
        self.events.publish(event)

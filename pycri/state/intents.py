"""Intents: what a mutating operation is about to make, recorded durably before it acts.

An operation writes its intent (the ids, paths, mounts, cgroups, namespaces, network
attachment and processes it will make), acts, then finishes the intent in the same
transaction that records its result. An intent still present at start names an
operation a crash cut short; recovery finishes it or undoes everything it names.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from pycri.state.store import Store


@dataclass(frozen=True)
class Intent:
    kind: str  # the operation, e.g. "run_pod_sandbox"
    object_id: str  # the pod, container, image or layer it acts on
    plan: dict[str, Any] = field(default_factory=dict)  # JSON-able: what it will make
    created_at: int = 0


def insert_intent(db: sqlite3.Connection, intent: Intent) -> None:
    db.execute(
        "INSERT OR REPLACE INTO intents (object_id, kind, plan, created_at) VALUES (?, ?, ?, ?)",
        (intent.object_id, intent.kind, json.dumps(intent.plan, sort_keys=True), intent.created_at or time.time_ns()),
    )


def delete_intent(db: sqlite3.Connection, object_id: str) -> None:
    db.execute("DELETE FROM intents WHERE object_id = ?", (object_id,))


class IntentLog:
    """The intents table, written on the store's writer thread."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def begin(self, kind: str, object_id: str, plan: dict[str, Any] | None = None) -> Intent:
        """Record the intent; it is on disk when this returns."""
        intent = Intent(kind, object_id, plan or {}, time.time_ns())
        await self._store.write(lambda db: insert_intent(db, intent))
        return intent

    async def replan(self, intent: Intent, plan: dict[str, Any]) -> Intent:
        """The intent with the plan an operation has learned more of; on disk when this returns."""
        replanned = dataclasses.replace(intent, plan=plan)
        await self._store.write(lambda db: insert_intent(db, replanned))
        return replanned

    async def finish(self, intent: Intent) -> None:
        await self._store.write(lambda db: delete_intent(db, intent.object_id))

    def pending(self) -> list[Intent]:
        """The intents a crash left unfinished, oldest first (read at start only)."""
        rows = self._store.query("SELECT object_id, kind, plan, created_at FROM intents ORDER BY created_at")
        return [Intent(row["kind"], row["object_id"], json.loads(row["plan"]), row["created_at"]) for row in rows]

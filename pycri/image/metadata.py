"""Image records (the images and image_names tables) served from memory, and snapshot leases.

Reads (ListImages, ImageStatus, the lookups CreateContainer makes) only ever see memory,
loaded at start. A write is one transaction on the store's writer thread that also reads
back the rows it changed; memory then takes those rows (persist first, then memory). One
lock keeps memory in the database's order. A record is never changed in place: a reader
in another thread sees a whole old record or a whole new one.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from pycri.errors import NotFound
from pycri.state.intents import Intent, delete_intent
from pycri.state.store import Store


@dataclass(frozen=True)
class ImageRecord:
    id: str  # config digest
    manifest_digest: str
    config: dict[str, Any]
    chain_ids: list[str]
    blobs: list[str]
    size: int
    created_at: int
    tags: list[str] = field(default_factory=list)  # "repo:tag"
    digests: list[str] = field(default_factory=list)  # "repo@sha256:..."


# Image id -> its record as the database now holds it, or None when the image is gone.
Changed = dict[str, ImageRecord | None]


def insert_image(db: sqlite3.Connection, record: ImageRecord) -> Changed:
    """Insert or update the image and point its names at it. An image that loses its last
    tag this way stays, reachable by ID and repo digest, as in containerd."""
    names = [*record.tags, *record.digests]
    marks = ",".join("?" * len(names))
    previous = db.execute(f"SELECT DISTINCT image_id FROM image_names WHERE name IN ({marks})", names).fetchall()
    db.execute(
        "INSERT INTO images (id, manifest_digest, config, chain_ids, blobs, size, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET manifest_digest=excluded.manifest_digest,"
        " blobs=(SELECT json_group_array(DISTINCT value) FROM"
        "  (SELECT value FROM json_each(images.blobs) UNION SELECT value FROM json_each(excluded.blobs)))",
        (
            record.id,
            record.manifest_digest,
            json.dumps(record.config, sort_keys=True),
            json.dumps(record.chain_ids),
            json.dumps(record.blobs),
            record.size,
            record.created_at,
        ),
    )
    for kind, kind_names in (("tag", record.tags), ("digest", record.digests)):
        for name in kind_names:
            db.execute(
                "INSERT INTO image_names (name, image_id, kind) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                (name, record.id, kind),
            )
    return read_images(db, {record.id, *(row["image_id"] for row in previous)})


def delete_tag(db: sqlite3.Connection, image_id: str, tag: str) -> Changed:
    """Drop one tag of the image; the image goes too when that was its last tag."""
    db.execute("DELETE FROM image_names WHERE name = ? AND image_id = ?", (tag, image_id))
    tagged = db.execute("SELECT 1 FROM image_names WHERE image_id = ? AND kind = 'tag' LIMIT 1", (image_id,))
    if tagged.fetchone() is None:
        db.execute("DELETE FROM images WHERE id = ?", (image_id,))
    return read_images(db, {image_id})


def delete_image(db: sqlite3.Connection, image_id: str) -> Changed:
    """Drop the image with all its names."""
    db.execute("DELETE FROM images WHERE id = ?", (image_id,))
    return {image_id: None}


def read_images(db: sqlite3.Connection, ids: Iterable[str] | None = None) -> Changed:
    """The records of `ids` (None for those that do not exist), or of every image."""
    wanted = None if ids is None else sorted(set(ids))
    params = tuple(wanted or ())
    marks = ",".join("?" * len(params))
    image_where, name_where = ("", "") if wanted is None else (f"WHERE id IN ({marks})", f"WHERE image_id IN ({marks})")
    rows = db.execute(f"SELECT * FROM images {image_where} ORDER BY created_at", params).fetchall()
    names: dict[str, list[sqlite3.Row]] = {}
    for name in db.execute(f"SELECT name, image_id, kind FROM image_names {name_where} ORDER BY name", params):
        names.setdefault(name["image_id"], []).append(name)
    found: Changed = dict.fromkeys(params)
    for row in rows:
        own = names.get(row["id"], [])
        found[row["id"]] = ImageRecord(
            id=row["id"],
            manifest_digest=row["manifest_digest"],
            config=json.loads(row["config"]),
            chain_ids=json.loads(row["chain_ids"]),
            blobs=json.loads(row["blobs"]),
            size=row["size"],
            created_at=row["created_at"],
            tags=[n["name"] for n in own if n["kind"] == "tag"],
            digests=[n["name"] for n in own if n["kind"] == "digest"],
        )
    return found


def referenced(db: sqlite3.Connection) -> tuple[set[str], set[str]]:
    """(blobs, chain IDs) that images keep or leases hold: what garbage collection must spare."""
    blobs = {row[0] for row in db.execute("SELECT DISTINCT value FROM images, json_each(images.blobs)")}
    chains = {
        row[0]
        for row in db.execute(
            "SELECT value FROM images, json_each(images.chain_ids) UNION SELECT chain_id FROM snapshot_leases"
        )
    }
    return blobs, chains


def insert_leases(db: sqlite3.Connection, owner: str, chain_ids: Iterable[str]) -> None:
    """Keep the snapshots from garbage collection while `owner` (a container, a pod's pause) uses them."""
    db.executemany(
        "INSERT OR IGNORE INTO snapshot_leases (owner, chain_id) VALUES (?, ?)",
        [(owner, chain_id) for chain_id in chain_ids],
    )


def delete_leases(db: sqlite3.Connection, owner: str) -> None:
    db.execute("DELETE FROM snapshot_leases WHERE owner = ?", (owner,))


class ImageMetadata:
    def __init__(self, store: Store, snapshot_exists: Callable[[str], bool] | None = None) -> None:
        """`snapshot_exists(chain_id)` says whether a snapshot is on disk; leases check it."""
        self._store = store
        self._snapshot_exists = snapshot_exists
        self._sweeping = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._images: dict[str, ImageRecord] = {}
        self._names: dict[str, str] = {}  # tag or repo digest -> image id
        with store.transaction() as db:  # start-up loading, before anything runs
            self._apply(read_images(db), replace=True)

    # -- reads: memory only ----------------------------------------------------

    def list(self) -> list[ImageRecord]:
        return sorted(self._images.values(), key=lambda record: record.created_at)

    def get(self, image_id: str) -> ImageRecord | None:
        return self._images.get(image_id)

    def find_by_id_prefix(self, prefix: str) -> builtins.list[ImageRecord]:
        """`prefix` is "sha256:" and some hex digits (callers validate it)."""
        return [record for image_id, record in self._images.items() if image_id.startswith(prefix)]

    def resolve_name(self, name: str) -> str | None:
        return self._names.get(name)

    # -- writes: the database first, then memory ---------------------------------

    async def save(self, record: ImageRecord) -> None:
        """Record the image under its names (names it had before stay)."""
        await self._write(lambda db: insert_image(db, record))

    async def remove_tag(self, image_id: str, tag: str, intent: Intent | None = None) -> bool:
        """Drop one tag, and the image with its last tag; finishes `intent` in the same
        transaction. True if the image went."""
        changed = await self._write(lambda db: _finishing(db, intent, lambda: delete_tag(db, image_id, tag)))
        return changed[image_id] is None

    async def remove(self, image_id: str, intent: Intent | None = None) -> None:
        """Drop the image and its names; finishes `intent` in the same transaction."""
        await self._write(lambda db: _finishing(db, intent, lambda: delete_image(db, image_id)))

    async def reload(self) -> None:
        """Take every record from the database again (another process changed it)."""
        await self._write(read_images, replace=True)

    async def referenced(self) -> tuple[set[str], set[str]]:
        """(blobs, chain IDs) that images and snapshot leases keep, read on the writer thread."""
        return await self._store.write(referenced)

    @property
    def sweeping(self) -> asyncio.Lock:
        """Held by garbage collection from reading the references until its deletions are done."""
        return self._sweeping

    async def lease_snapshots(self, owner: str, chain_ids: builtins.list[str]) -> None:
        """Lease the snapshots to `owner`, or raise NotFound when one is gone. Waits for a sweep
        under way: a snapshot that lost its image between a caller's lookup and this lease
        (RemoveImage racing CreateContainer) is then either deleted, and refused here, or
        leased before the next sweep reads the references; never mounted while it is deleted."""
        async with self._sweeping:
            if self._snapshot_exists is not None:
                exists = self._snapshot_exists
                gone = await asyncio.to_thread(lambda: [chain_id for chain_id in chain_ids if not exists(chain_id)])
                if gone:
                    raise NotFound(
                        f"the image was removed while {owner} was being made from it: its snapshot {gone[0]}"
                        " is gone; pull the image again"
                    )
            await self._store.write(lambda db: insert_leases(db, owner, chain_ids))

    async def release_snapshots(self, owner: str) -> None:
        await self._store.write(lambda db: delete_leases(db, owner))

    async def release_snapshots_of_all_but(self, owners: Collection[str]) -> int:
        """Drop the leases of every owner not in `owners` (at start: those gone while pycri was down)."""

        def release(db: sqlite3.Connection) -> int:
            stale = [
                owner for (owner,) in db.execute("SELECT DISTINCT owner FROM snapshot_leases") if owner not in owners
            ]
            for owner in stale:
                delete_leases(db, owner)
            return len(stale)

        return await self._store.write(release)

    async def _write(self, change: Callable[[sqlite3.Connection], Changed], replace: bool = False) -> Changed:
        """Shielded: a caller cancelled while the transaction runs still gets memory updated."""
        return await asyncio.shield(self._write_and_apply(change, replace))

    async def _write_and_apply(self, change: Callable[[sqlite3.Connection], Changed], replace: bool) -> Changed:
        async with self._write_lock:
            changed = await self._store.write(change)
            self._apply(changed, replace)
        return changed

    def _apply(self, changed: Changed, replace: bool = False) -> None:
        """Swap in new dicts, so a reader in another thread iterates a whole old or new one."""
        images = {} if replace else dict(self._images)
        for image_id, record in changed.items():
            if record is None:
                images.pop(image_id, None)
            else:
                images[image_id] = record
        self._images = images
        self._names = {name: record.id for record in images.values() for name in (*record.tags, *record.digests)}


def _finishing(db: sqlite3.Connection, intent: Intent | None, change: Callable[[], Changed]) -> Changed:
    changed = change()
    if intent is not None:
        delete_intent(db, intent.object_id)
    return changed

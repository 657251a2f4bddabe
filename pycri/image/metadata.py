"""Image records in the metadata store: images, their names, and snapshot leases."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pycri.state.store import Store


@dataclass
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


class ImageMetadata:
    def __init__(self, store: Store) -> None:
        self._store = store

    def save(self, record: ImageRecord) -> None:
        """Insert or update the image and point its names at it. An image that loses its
        last tag this way stays, reachable by ID and repo digest, as in containerd."""
        with self._store.transaction() as db:
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
            for kind, names in (("tag", record.tags), ("digest", record.digests)):
                for name in names:
                    db.execute(
                        "INSERT INTO image_names (name, image_id, kind) VALUES (?, ?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                        (name, record.id, kind),
                    )

    @staticmethod
    def _has_tags(db: Any, image_id: str) -> bool:
        query = "SELECT 1 FROM image_names WHERE image_id = ? AND kind = 'tag' LIMIT 1"
        return db.execute(query, (image_id,)).fetchone() is not None

    def _records(self, where: str = "", params: tuple[Any, ...] = ()) -> list[ImageRecord]:
        rows = self._store.query(f"SELECT * FROM images {where} ORDER BY created_at", params)
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        marks = ",".join("?" * len(ids))
        names: dict[str, list[Any]] = {}
        for name in self._store.query(
            f"SELECT name, image_id, kind FROM image_names WHERE image_id IN ({marks}) ORDER BY name", tuple(ids)
        ):
            names.setdefault(name["image_id"], []).append(name)
        return [
            ImageRecord(
                id=row["id"],
                manifest_digest=row["manifest_digest"],
                config=json.loads(row["config"]),
                chain_ids=json.loads(row["chain_ids"]),
                blobs=json.loads(row["blobs"]),
                size=row["size"],
                created_at=row["created_at"],
                tags=[n["name"] for n in names.get(row["id"], []) if n["kind"] == "tag"],
                digests=[n["name"] for n in names.get(row["id"], []) if n["kind"] == "digest"],
            )
            for row in rows
        ]

    def list(self) -> list[ImageRecord]:
        return self._records()

    def get(self, image_id: str) -> ImageRecord | None:
        found = self._records("WHERE id = ?", (image_id,))
        return found[0] if found else None

    def find_by_id_prefix(self, prefix: str) -> list[ImageRecord]:
        """`prefix` is "sha256:" and some hex digits (callers validate it)."""
        return self._records("WHERE substr(id, 1, ?) = ?", (len(prefix), prefix))

    def resolve_name(self, name: str) -> str | None:
        rows = self._store.query("SELECT image_id FROM image_names WHERE name = ?", (name,))
        return rows[0]["image_id"] if rows else None

    def remove_name(self, name: str) -> bool:
        """Drop one tag; the image goes too when that was its last tag. True if the image went."""
        with self._store.transaction() as db:
            row = db.execute("SELECT image_id FROM image_names WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM image_names WHERE name = ?", (name,))
            if self._has_tags(db, row["image_id"]):
                return False
            db.execute("DELETE FROM images WHERE id = ?", (row["image_id"],))
            return True

    def remove(self, image_id: str) -> bool:
        with self._store.transaction() as db:
            return db.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount > 0

    def referenced_blobs(self) -> set[str]:
        rows = self._store.query("SELECT DISTINCT value FROM images, json_each(images.blobs)")
        return {row["value"] for row in rows}

    def referenced_chain_ids(self) -> set[str]:
        rows = self._store.query(
            "SELECT value FROM images, json_each(images.chain_ids) UNION SELECT chain_id FROM snapshot_leases"
        )
        return {row["value"] for row in rows}

    def lease(self, owner: str, chain_ids: list[str]) -> None:
        with self._store.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO snapshot_leases (owner, chain_id) VALUES (?, ?)",
                [(owner, chain_id) for chain_id in chain_ids],
            )

    def release(self, owner: str) -> None:
        self._store.execute("DELETE FROM snapshot_leases WHERE owner = ?", (owner,))

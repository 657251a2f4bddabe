"""Garbage collection of the image store: blobs and snapshots nothing references.

Referenced are the blobs and chain IDs of recorded images, the chain IDs that snapshot
leases hold (containers, a pod's pause), and what pulls of this process have stored but
not yet recorded. The references are read on the store's writer thread, after every
write before them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pycri.image.content import ContentStore
from pycri.image.metadata import ImageMetadata
from pycri.image.snapshots import SnapshotStore

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(
        self, content: ContentStore, snapshots: SnapshotStore, metadata: ImageMetadata, grace_seconds: float
    ) -> None:
        """grace_seconds > 0 spares blobs and snapshots changed that recently: for a process
        beside a running daemon, whose pulls it cannot see."""
        self._content = content
        self._snapshots = snapshots
        self._metadata = metadata
        self._grace_seconds = grace_seconds
        # Blobs and snapshots of pulls not yet recorded.
        self._pulling: Counter[str] = Counter()

    def protect(self, names: list[str]) -> None:
        self._pulling.update(names)

    def unprotect(self, names: list[str]) -> None:
        self._pulling.subtract(names)
        self._pulling = +self._pulling  # drops the zero counts

    async def sweep(self) -> tuple[int, int]:
        """Delete every blob and snapshot nothing references; returns how many of each went."""
        blobs = await asyncio.to_thread(list, self._content.list())
        chains = await asyncio.to_thread(self._snapshots.list)
        if self._grace_seconds > 0:
            blobs, chains = await asyncio.to_thread(self._settled, blobs, chains)
        return await self.collect(blobs, chains)

    def _settled(self, blobs: list[str], chains: list[str]) -> tuple[list[str], list[str]]:
        cutoff = time.time() - self._grace_seconds
        return (
            [digest for digest in blobs if _changed_at(self._content.path(digest)) < cutoff],
            [chain for chain in chains if _changed_at(self._snapshots.path(chain).parent) < cutoff],
        )

    async def collect(self, blobs: list[str], chains: list[str]) -> tuple[int, int]:
        """Delete those of `blobs` and of the snapshots `chains` that exist and nothing references."""
        # Leases wait meanwhile: one taken after the references are read would not save its snapshots.
        async with self._metadata.sweeping:
            blobs_kept, chains_kept = await self._metadata.referenced()
            in_use = set(self._pulling)
            doomed_blobs = [d for d in blobs if d not in blobs_kept and d not in in_use]
            doomed_chains = [c for c in chains if c not in chains_kept and c not in in_use]
            doomed_blobs, doomed_chains = await asyncio.to_thread(self._delete, doomed_blobs, doomed_chains)
        if doomed_blobs or doomed_chains:
            log.info(
                "collected garbage",
                extra={"fields": {"blobs": len(doomed_blobs), "snapshots": len(doomed_chains)}},
            )
        return len(doomed_blobs), len(doomed_chains)

    def _delete(self, blobs: Iterable[str], chains: Iterable[str]) -> tuple[list[str], list[str]]:
        """Delete those that exist; returns them."""
        deleted_blobs = [digest for digest in blobs if self._content.has(digest)]
        deleted_chains = [chain_id for chain_id in chains if self._snapshots.has(chain_id)]
        for digest in deleted_blobs:
            self._content.delete(digest)
        for chain_id in deleted_chains:
            self._snapshots.remove(chain_id)
        return deleted_blobs, deleted_chains


def _changed_at(path: Path) -> float:
    """When the file or directory was last written or renamed; infinity when it is gone."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return math.inf
    return max(info.st_mtime, info.st_ctime)

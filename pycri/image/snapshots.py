"""Unpacked layers: ``<root>/snapshots/<chain-id-hex>/fs``, one overlayfs lower dir each.

A snapshot is keyed by the OCI chain ID of its layer, so images that share a
base share its snapshots. Each layer is stored as its own diff (whiteouts as
overlayfs writes them), never applied on top of its parent, so the layers of
one image unpack in parallel and a container's rootfs is one overlay mount.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri.image import overlay
from pycri.image.durable import fsync_dir, sync_filesystem
from pycri.image.unpack import UnpackCancelled, UnpackGuard, apply_layer
from pycri.state.intents import IntentLog

log = logging.getLogger(__name__)

_TEMP_PREFIX = "tmp-"
# The intent of one unpack: its object is the temp dir the layer is extracted into, renamed
# into place once whole. Plan: chain_id, temp_dir (absolute path), blob (the layer's path).
UNPACK_LAYER = "unpack_layer"


class SnapshotError(Exception):
    """A layer whose snapshot could not be made; the message names the layer."""


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: the first is the first diff ID, each next one sha256("<previous> <diff ID>")."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
        else:
            chain.append(diff_id)
    return chain


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) a tree takes on disk, counting each hard-linked inode once."""
    try:
        root = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    used_bytes, inodes = root.st_blocks * 512, 1
    seen: set[tuple[int, int]] = set()
    pending = [str(path)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            used_bytes += info.st_blocks * 512
            inodes += 1
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
    return used_bytes, inodes


@dataclass
class _Unpack:
    """One running unpack and the callers that wait for it; the last to leave cancels it."""

    done: asyncio.Future[None]
    guard: UnpackGuard
    waiters: int = 0


class SnapshotStore:
    def __init__(self, root: Path, intents: IntentLog | None = None, unpack_workers: int = 2) -> None:
        """With `intents`, every unpack is recorded before its temp dir is made. Layers unpack
        on a pool of `unpack_workers` threads of their own; more wait their turn."""
        self._dir = root / "snapshots"
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._intents = intents
        self._inflight: dict[str, _Unpack] = {}
        self._workers = concurrent.futures.ThreadPoolExecutor(unpack_workers, thread_name_prefix="unpack")

    def close(self) -> None:
        """Stop the pool: unpacks not started yet never start, running ones stop at their next
        entry (the process would wait for them at exit); a next start discards what they left."""
        for run in self._inflight.values():
            run.guard.cancelled.set()
        self._workers.shutdown(wait=False, cancel_futures=True)

    def path(self, chain_id: str) -> Path:
        """The directory holding the layer's files: an overlayfs lower dir."""
        return self._snapshot_dir(chain_id) / "fs"

    def _snapshot_dir(self, chain_id: str) -> Path:
        algorithm, _, hex_part = chain_id.partition(":")
        if algorithm != "sha256" or len(hex_part) != 64 or hex_part.strip("0123456789abcdef"):
            raise SnapshotError(f"invalid chain ID {chain_id!r}")
        return self._dir / hex_part

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    async def unpack(
        self,
        chain_id: str,
        blob_path: Path,
        media_type: str,
        expected_diff_id: str,
        guard: UnpackGuard | None = None,
    ) -> None:
        """Extract the layer blob as snapshot chain_id unless it exists; concurrent calls share one run.

        When every caller of a run is cancelled, the worker stops at its next
        entry and removes its temp dir before the last caller's cancellation
        goes on; otherwise the run renames its temp dir into place or removes it.
        """
        while not self.has(chain_id):
            run = self._inflight.get(chain_id)
            if run is None:
                run_guard = guard or UnpackGuard()
                done = asyncio.ensure_future(
                    self._unpack_recorded(chain_id, blob_path, media_type, expected_diff_id, run_guard)
                )
                run = _Unpack(done, run_guard)
                self._inflight[chain_id] = run
                done.add_done_callback(lambda finished: self._forget(chain_id, finished))
                await self._wait(run)
                return
            if run.done.done():
                # Ended, not yet forgotten: awaiting it would not yield, and _forget must run first.
                await asyncio.sleep(0)
                continue
            # A failed (or cancelled) run leaves has() false and this caller tries on its own.
            with contextlib.suppress(Exception):
                await self._wait(run)

    @staticmethod
    async def _wait(run: _Unpack) -> None:
        run.waiters += 1
        try:
            await asyncio.shield(run.done)
        except asyncio.CancelledError:
            if run.waiters == 1 and not run.done.done():
                run.guard.cancelled.set()
                # The temp dir goes before the caller hears of its own cancellation.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(run.done)
            raise
        finally:
            run.waiters -= 1

    def _forget(self, chain_id: str, done: asyncio.Future[None]) -> None:
        del self._inflight[chain_id]
        if not done.cancelled():
            done.exception()  # the caller may be gone: nobody else must look at it

    async def _unpack_recorded(
        self, chain_id: str, blob_path: Path, media_type: str, expected_diff_id: str, guard: UnpackGuard
    ) -> None:
        """The unpack on the pool, between its intent and the end of that intent."""
        temp = self._dir / f"{_TEMP_PREFIX}{secrets.token_hex(16)}"
        plan = {"chain_id": chain_id, "temp_dir": str(temp), "blob": str(blob_path)}
        intent = None if self._intents is None else await self._intents.begin(UNPACK_LAYER, temp.name, plan)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._workers, self._unpack_now, chain_id, blob_path, media_type, expected_diff_id, temp, guard
            )
        finally:
            if intent is not None and self._intents is not None:
                await self._intents.finish(intent)

    def _unpack_now(
        self, chain_id: str, blob_path: Path, media_type: str, expected_diff_id: str, temp: Path, guard: UnpackGuard
    ) -> None:
        guard.check_cancelled()  # cancelled while it waited for a worker
        final = self._snapshot_dir(chain_id)
        # The snapshot dir is owner only; its `fs`, the layer's root, keeps the usual mode, as overlay shows it.
        temp.mkdir(mode=0o700)
        try:
            (temp / "fs").mkdir()
            started = time.monotonic()
            diff_id = apply_layer(blob_path, media_type, temp / "fs", guard)
            guard.check_cancelled()
            if diff_id != expected_diff_id:
                raise SnapshotError(
                    f"layer {blob_path.name}: unpacked diff ID {diff_id} differs from the image's {expected_diff_id}"
                )
            sync_filesystem(temp)  # the layer's files and dirs are durable before the snapshot is
            try:
                os.rename(temp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # Another process unpacked the same layer first.
                shutil.rmtree(temp)
            else:
                fsync_dir(self._dir)
        except BaseException as exc:
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(exc, UnpackCancelled):
                log.info("stopped the unpack of a cancelled pull", extra={"fields": {"chain_id": chain_id}})
            raise
        log.info(
            "unpacked layer",
            extra={
                "fields": {
                    "chain_id": chain_id,
                    "diff_id": diff_id,
                    "seconds": round(time.monotonic() - started, 3),
                }
            },
        )

    def remove(self, chain_id: str) -> None:
        """Delete a snapshot; a missing one is not an error. Blocks for as long as the tree takes."""
        final = self._snapshot_dir(chain_id)
        # Renamed first so that a crash midway leaves a temp dir for cleanup_tmp, not half a layer.
        doomed = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=self._dir))
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, doomed / "snapshot")
        shutil.rmtree(doomed)

    def list(self) -> list[str]:
        return [
            "sha256:" + entry.name
            for entry in os.scandir(self._dir)
            if len(entry.name) == 64 and not entry.name.strip("0123456789abcdef")
        ]

    def discard_unpack(self, plan: dict[str, Any]) -> None:
        """Undo the unpack an unfinished intent names: its temp dir goes. A snapshot it
        renamed into place is whole and stays for garbage collection to judge."""
        temp = Path(plan.get("temp_dir") or "")
        if temp.parent != self._dir or not temp.name.startswith(_TEMP_PREFIX):
            log.warning("ignored an unpack intent naming a foreign dir", extra={"fields": {"temp_dir": str(temp)}})
            return
        shutil.rmtree(temp, ignore_errors=True)
        log.info(
            "removed a half-unpacked layer", extra={"fields": {"chain_id": plan.get("chain_id"), "path": str(temp)}}
        )

    def cleanup_tmp(self) -> None:
        """Remove temp dirs of unpacks and removals a killed process left; call at start."""
        for entry in os.scandir(self._dir):
            if entry.name.startswith(_TEMP_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
                log.info("removed stale snapshot temp dir", extra={"fields": {"path": entry.path}})

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) all snapshots take on disk."""
        return disk_usage(self._dir)

    def mount_rootfs(
        self,
        lower_chain_ids_top_first: builtins.list[str],
        upper: Path | None,
        work: Path | None,
        target: Path,
        readonly: bool = False,
    ) -> None:
        """Mount the snapshots as one overlay at target; writes go to upper unless readonly.

        A read-only rootfs takes no upper or work dir.
        """
        lowers = [self.path(chain_id) for chain_id in lower_chain_ids_top_first]
        if readonly:
            overlay.mount_overlay(lowers, target)
        elif upper is None or work is None:
            raise SnapshotError(f"a writable rootfs at {target} needs an upper and a work dir")
        else:
            overlay.mount_overlay(lowers, target, upper, work)

"""Content-addressed blob store: ``<root>/content/<algorithm>/<hex>``.

Blobs stream into ``content/ingest/`` while they are hashed and counted, and
are renamed into place only once digest and size match, so a blob under its
digest is always whole and verified. Concurrent ingests of one digest in this
process download it once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from pycri.image.durable import fsync_dir
from pycri.image.reference import DIGEST_HEX_LENGTHS
from pycri.image.snapshots import disk_usage

log = logging.getLogger(__name__)

# Chunks are gathered up to this many bytes before one write in a thread.
_BATCH_BYTES = 1 << 20
# Writes and hashing of big batches leave the event loop for these threads;
# their futures tell when a thread is done with a file descriptor.
_IO_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="content-io")
# Blobs are read-only once verified and, like their dirs, only pycri's to read.
BLOB_MODE = 0o400
PRIVATE_DIR_MODE = 0o700


class ContentError(Exception):
    """A blob that could not be stored or found; the message names the digest."""


class BlobNotFound(ContentError):
    pass


def split_digest(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a digest such as "sha256:ab12..."; anything else is refused."""
    algorithm, _, hex_part = digest.partition(":")
    expected_length = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected_length is None or len(hex_part) != expected_length or hex_part.strip("0123456789abcdef"):
        raise ContentError(f"invalid digest {digest!r}")
    return algorithm, hex_part


class _BlobWriter:
    """A temp file being filled and hashed; used by one thread at a time."""

    def __init__(self, fd: int, algorithm: str) -> None:
        self._fd = fd
        self._hash = hashlib.new(algorithm)
        self.algorithm = algorithm

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._hash.update(chunk)
            _write_all(self._fd, chunk)

    def finish(self, chunks: list[bytes]) -> str:
        """Write the last chunks, make the file durable and read-only; return the digest."""
        self.write(chunks)
        os.fchmod(self._fd, BLOB_MODE)
        os.fsync(self._fd)
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def close(self) -> None:
        os.close(self._fd)


def _move_into_place(temp_name: str, final: Path) -> None:
    """Rename a written and fsynced blob to its name, durably: its directory (and that
    directory's own entry, when it is new) is fsynced before the blob counts as stored."""
    made = not final.parent.is_dir()
    final.parent.mkdir(exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.rename(temp_name, final)
    fsync_dir(final.parent)
    if made:
        fsync_dir(final.parent.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ContentStore:
    def __init__(self, root: Path) -> None:
        self._root = root / "content"
        self._ingest_dir = self._root / "ingest"
        self._root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        self._ingest_dir.mkdir(exist_ok=True, mode=PRIVATE_DIR_MODE)
        self._inflight: dict[str, asyncio.Future[Path]] = {}

    def path(self, digest: str) -> Path:
        algorithm, hex_part = split_digest(digest)
        return self._root / algorithm / hex_part

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    async def ingest(self, digest: str, size: int | None, chunks: AsyncIterator[bytes]) -> Path:
        """Store the blob that chunks yields, verified against digest and size; return its path.

        A blob already stored is not read again; while another ingest of the
        same digest runs, this one waits for it and uses its own chunks only
        if that one fails. Cancellation leaves no file behind and is re-raised
        as CancelledError; every other failure raises ContentError.
        """
        algorithm, _ = split_digest(digest)
        while True:
            if self.has(digest):
                await _close_unread(chunks)
                return self.path(digest)
            running = self._inflight.get(digest)
            if running is None:
                break
            with contextlib.suppress(ContentError):
                return await asyncio.shield(running)
        done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = done
        try:
            path = await self._write_blob(digest, algorithm, size, chunks)
        except BaseException as exc:
            failure = exc if isinstance(exc, ContentError) else ContentError(f"ingest of {digest} stopped: {exc!r}")
            done.set_exception(failure)
            done.exception()  # waiters are optional: nobody else may look at it
            raise
        else:
            done.set_result(path)
            return path
        finally:
            del self._inflight[digest]

    async def _write_blob(self, digest: str, algorithm: str, size: int | None, chunks: AsyncIterator[bytes]) -> Path:
        fd, temp_name = tempfile.mkstemp(dir=self._ingest_dir)
        writer = _BlobWriter(fd, algorithm)
        # One batch is written in a thread while the next one arrives.
        writing: concurrent.futures.Future[Any] | None = None
        batch: list[bytes] = []
        batch_bytes = received = 0
        stored = False
        try:
            async for chunk in chunks:
                received += len(chunk)
                if size is not None and received > size:
                    raise ContentError(f"blob {digest}: expected {size} bytes, got more")
                batch.append(chunk)
                batch_bytes += len(chunk)
                if batch_bytes >= _BATCH_BYTES:
                    if writing is not None:
                        await asyncio.wrap_future(writing)
                    writing = _IO_THREADS.submit(writer.write, batch)
                    batch, batch_bytes = [], 0
            if writing is not None:
                await asyncio.wrap_future(writing)
            finishing = _IO_THREADS.submit(writer.finish, batch)
            writing = finishing
            actual = await asyncio.wrap_future(finishing)
            if size is not None and received != size:
                raise ContentError(f"blob {digest}: expected {size} bytes, got {received}")
            if actual != digest:
                raise ContentError(f"blob {digest}: content has digest {actual}")
            final = self.path(digest)
            await asyncio.to_thread(_move_into_place, temp_name, final)
            stored = True
        except ContentError:
            raise
        except Exception as exc:
            raise ContentError(f"blob {digest}: {exc}") from exc
        finally:
            if not stored:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name)
            _close_when_idle(writer, writing)
        log.debug("stored blob", extra={"fields": {"digest": digest, "size": received}})
        return final

    def put_bytes(self, digest: str | None, data: bytes) -> str:
        """Store a small blob (a manifest, a config) and return its digest, computed if not given."""
        algorithm = split_digest(digest)[0] if digest else "sha256"
        actual = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if digest and actual != digest:
            raise ContentError(f"blob {digest}: content has digest {actual}")
        final = self.path(actual)
        if final.is_file():
            return actual
        fd, temp_name = tempfile.mkstemp(dir=self._ingest_dir)
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, BLOB_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            _move_into_place(temp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        return actual

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def list(self) -> Iterator[str]:
        for algorithm, length in DIGEST_HEX_LENGTHS.items():
            try:
                entries = list(os.scandir(self._root / algorithm))
            except FileNotFoundError:
                continue
            for entry in entries:
                if len(entry.name) == length and not entry.name.strip("0123456789abcdef"):
                    yield f"{algorithm}:{entry.name}"

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) the store takes on disk."""
        return disk_usage(self._root)

    def cleanup_ingest(self) -> None:
        """Remove ingest files a killed process left; call at start, before any ingest."""
        for entry in os.scandir(self._ingest_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                log.info("removed stale ingest file", extra={"fields": {"path": entry.path}})


async def _close_unread(chunks: AsyncIterator[bytes]) -> None:
    """Let a source that is not needed release its connection now."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _close_when_idle(writer: _BlobWriter, writing: concurrent.futures.Future[Any] | None) -> None:
    """Close the file once no thread writes to it: a cancelled await does not stop the thread."""
    if writing is None:
        writer.close()
    else:
        writing.add_done_callback(lambda _: writer.close())

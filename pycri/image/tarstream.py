"""Reading layer tars: decompression, the diff ID hash and tar headers, in one pass.

A reader thread decompresses and hashes the blob (zlib, ISA-L and zstd
release the GIL) while the caller's thread parses headers and writes files,
so a single layer uses two cores.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import types
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from pycri.config import ImageLimits

_inflate_lib: types.ModuleType
try:  # ISA-L inflates gzip about twice as fast as zlib; the output is the same.
    from isal import isal_zlib as _inflate_lib
except ImportError:
    _inflate_lib = zlib

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK_SIZE = 512

REGULAR = (b"0", b"\0", b"7")
HARDLINK = b"1"
SYMLINK = b"2"
CHAR_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_PAX = b"x"
_GNU_LONG_NAME = b"L"
_GNU_LONG_LINK = b"K"
_GNU_SPARSE = b"S"
# Global PAX and Solaris headers: nothing in them matters for extraction.
_IGNORED = (b"g", b"X")
_POSIX_MAGIC = b"ustar\x0000"

_READ_SIZE = 1 << 20
_PREFETCH_CHUNKS = 8
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_END = b""


class LayerError(Exception):
    """A layer that cannot be extracted: corrupt, truncated or of an unsupported kind."""


class LimitExceeded(LayerError):
    """A layer over one of images.limits; the message names the key."""


def detect_compression(media_type: str, head: bytes, blob_path: Path) -> str:
    """ "gzip", "zstd" or "plain". The magic bytes decide; a media type that disagrees is logged."""
    if head.startswith(GZIP_MAGIC):
        found = "gzip"
    elif head.startswith(ZSTD_MAGIC):
        found = "zstd"
    else:
        found = "plain"
    if media_type.endswith(("+gzip", ".gzip")):
        declared: str | None = "gzip"
    elif media_type.endswith(("+zstd", ".zstd")):
        declared = "zstd"
    elif media_type.endswith("tar"):
        declared = "plain"
    else:
        declared = None
    if declared is not None and declared != found:
        log.warning(
            "layer compression differs from its media type",
            extra={"fields": {"blob": str(blob_path), "media_type": media_type, "found": found}},
        )
    return found


def _decompressed(raw: BinaryIO, compression: str) -> Iterator[bytes]:
    if compression == "gzip":
        yield from _gunzip(raw)
    elif compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_READ_SIZE, read_across_frames=True)
        while chunk := reader.read(_READ_SIZE):
            yield chunk
    else:
        while chunk := raw.read(_READ_SIZE):
            yield chunk


def _gunzip(raw: BinaryIO) -> Iterator[bytes]:
    """Inflate every gzip member in turn; zero padding after the last one is allowed."""
    inflater = _inflate_lib.decompressobj(_GZIP_WBITS)
    pending = b""
    raw_exhausted = False
    while True:
        if not pending and not raw_exhausted:
            pending = raw.read(_READ_SIZE)
            raw_exhausted = not pending
        # max_length bounds memory however well the data compresses.
        out = inflater.decompress(pending, _READ_SIZE)
        pending = inflater.unconsumed_tail
        if out:
            yield out
        if inflater.eof:
            rest = inflater.unused_data
            while not rest.strip(b"\0") and not raw_exhausted:
                rest = raw.read(_READ_SIZE)
                raw_exhausted = not rest
            if not rest.strip(b"\0"):
                return
            inflater = _inflate_lib.decompressobj(_GZIP_WBITS)
            pending = rest
        elif not out and not pending and raw_exhausted:
            raise LayerError("gzip stream is truncated")


class _ChunkReader:
    """Decompresses and hashes a blob on its own thread, a few chunks ahead of the consumer."""

    def __init__(self, raw: BinaryIO, compression: str) -> None:
        self._chunks = _decompressed(raw, compression)
        self._compression = compression
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(_PREFETCH_CHUNKS)
        self._stopping = False
        self._hash = hashlib.sha256()
        self._thread = threading.Thread(target=self._produce, name="layer-reader", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for chunk in self._chunks:
                self._hash.update(chunk)
                self._queue.put(chunk)
                if self._stopping:
                    return
            self._queue.put(_END)
        except (zlib.error, _inflate_lib.error, zstandard.ZstdError) as exc:
            self._queue.put(LayerError(f"corrupt {self._compression} stream: {exc}"))
        except BaseException as exc:  # handed to the consumer, who raises it
            self._queue.put(exc)

    def next_chunk(self) -> bytes:
        """The next chunk, or b"" at the end."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        if not item:
            self._queue.put(_END)  # for the next caller: the end stays the end
        return item

    def hexdigest(self) -> str:
        """The sha256 of all the bytes; only valid once next_chunk returned b""."""
        return self._hash.hexdigest()

    def close(self) -> None:
        """Stop the thread: it puts at most one more chunk, for which draining makes room."""
        self._stopping = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class TarStream:
    """The uncompressed bytes of a layer tar, read by headers and copied out by file data.

    Tracks the offset so that tar_members can skip what a consumer left unread.
    """

    def __init__(self, raw: BinaryIO, compression: str) -> None:
        self._reader = _ChunkReader(raw, compression)
        self._buf = memoryview(b"")
        self.offset = 0

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._reader.close()

    def _fill(self) -> bool:
        self._buf = memoryview(self._reader.next_chunk())
        return bool(self._buf)

    def read(self, size: int) -> bytes:
        """Up to size bytes; fewer only at the end of the stream."""
        if len(self._buf) >= size:
            data = self._buf[:size].tobytes()
            self._buf = self._buf[size:]
            self.offset += size
            return data
        pieces = []
        while size and (self._buf or self._fill()):
            piece = self._buf[:size]
            pieces.append(piece.tobytes())
            self._buf = self._buf[len(piece) :]
            self.offset += len(piece)
            size -= len(piece)
        return b"".join(pieces)

    def read_exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise LayerError(f"tar stream ends inside {what}")
        return data

    def copy_to(self, fd: int, size: int, what: str) -> None:
        while size:
            if not self._buf and not self._fill():
                raise LayerError(f"tar stream ends inside {what}")
            written = os.write(fd, self._buf[:size])
            self._buf = self._buf[written:]
            self.offset += written
            size -= written

    def skip(self, size: int) -> None:
        while size and (self._buf or self._fill()):
            step = min(size, len(self._buf))
            self._buf = self._buf[step:]
            self.offset += step
            size -= step

    def finish(self) -> str:
        """Hash what follows the end-of-archive blocks too, and return the diff ID."""
        while self._fill():
            pass
        return "sha256:" + self._reader.hexdigest()


@dataclass(slots=True)
class Member:
    """One tar member with its PAX and GNU long-name records applied."""

    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] = field(default_factory=dict)


def tar_members(stream: TarStream, limits: ImageLimits | None = None) -> Iterator[Member]:
    """Each member in order. The consumer may copy a member's data out of the
    stream; whatever it leaves unread is skipped before the next header.

    Extended headers are read into memory only below their cap, so a layer
    cannot make this hold more than images.limits allows.
    """
    limits = limits or ImageLimits()
    pax: dict[str, bytes] = {}
    long_name: str | None = None
    long_link: str | None = None
    extended_bytes = members = 0
    while True:
        block = stream.read(BLOCK_SIZE)
        if len(block) < BLOCK_SIZE or not block.strip(b"\0"):
            return
        member = _parse_header(block, stream.offset - BLOCK_SIZE)
        if member.type in (_PAX, _GNU_LONG_NAME, _GNU_LONG_LINK):
            extended_bytes += member.size
            _check_extended_size(member, extended_bytes, limits, stream.offset - BLOCK_SIZE)
            data = stream.read_exact(member.size, "an extended header")
            stream.skip(-member.size % BLOCK_SIZE)
            if member.type == _PAX:
                pax.update(_parse_pax(data))
            elif member.type == _GNU_LONG_NAME:
                long_name = _decode(data.split(b"\0", 1)[0])
            else:
                long_link = _decode(data.split(b"\0", 1)[0])
            continue
        if member.type == _GNU_SPARSE or any(key.startswith("GNU.sparse.") for key in pax):
            raise LayerError(f"layer entry {member.name!r}: sparse files are not supported")
        if long_name is not None:
            member.name = long_name
        if long_link is not None:
            member.linkname = long_link
        if pax:
            _apply_pax(member, pax)
        _check_path_lengths(member, limits.path_max_bytes)
        members += 1
        if members > limits.entries_per_layer_max:
            raise LimitExceeded(
                f"layer has more than {limits.entries_per_layer_max} entries (images.limits.entries_per_layer_max)"
            )
        data_end = stream.offset + member.size + (-member.size % BLOCK_SIZE)
        if member.type not in _IGNORED:
            yield member
        stream.skip(data_end - stream.offset)
        pax = {}
        long_name = long_link = None
        extended_bytes = 0


def _check_extended_size(header: Member, pending_bytes: int, limits: ImageLimits, offset: int) -> None:
    """Refuse an extended header (with those before it for the same member) over its cap, unread."""
    if header.type == _PAX:
        if pending_bytes > limits.pax_header_max_bytes:
            raise LimitExceeded(
                f"PAX header of {pending_bytes} bytes at offset {offset} is over the"
                f" {limits.pax_header_max_bytes} of images.limits.pax_header_max_bytes"
            )
    elif header.size > limits.path_max_bytes + 1 or pending_bytes > limits.pax_header_max_bytes:
        # GNU tar ends the name with a NUL.
        raise LimitExceeded(
            f"GNU long name or link of {header.size} bytes at offset {offset} is over the"
            f" {limits.path_max_bytes} of images.limits.path_max_bytes"
        )


def _check_path_lengths(member: Member, path_max_bytes: int) -> None:
    for what, text in (("path", member.name), ("link target", member.linkname)):
        length = len(text.encode("utf-8", "surrogateescape"))
        if length > path_max_bytes:
            raise LimitExceeded(
                f"layer entry {text[:64]!r}...: {what} of {length} bytes is over the"
                f" {path_max_bytes} of images.limits.path_max_bytes"
            )


def _parse_header(block: bytes, offset: int) -> Member:
    """A ustar, GNU or v7 header block."""
    try:
        checksum = _number(block[148:156])
        # The checksum field itself counts as eight spaces.
        if checksum != sum(block) - sum(block[148:156]) + 256 and checksum != _signed_checksum(block):
            raise LayerError(f"bad tar header checksum at offset {offset}")
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:265] == _POSIX_MAGIC and block[345] != 0:
            name = block[345:500].split(b"\0", 1)[0] + b"/" + name
        kind = block[156:157]
        if kind == b"\0" and name.endswith(b"/"):
            kind = DIRECTORY
        return Member(
            name=_decode(name),
            type=kind,
            size=_number(block[124:136]),
            mode=_number(block[100:108]) & 0o7777,
            uid=_number(block[108:116]),
            gid=_number(block[116:124]),
            mtime_ns=_number(block[136:148]) * 1_000_000_000,
            linkname=_decode(block[157:257].split(b"\0", 1)[0]),
            devmajor=_number(block[329:337]),
            devminor=_number(block[337:345]),
        )
    except ValueError as exc:
        raise LayerError(f"bad tar header at offset {offset}: {exc}") from None


def _signed_checksum(block: bytes) -> int:
    """Some old tars summed the header as signed chars."""
    return sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256


def _number(field_bytes: bytes) -> int:
    """An octal field, or GNU base-256 when the high bit of the first byte is set."""
    if field_bytes[0] == 0xFF:
        return int.from_bytes(field_bytes, "big", signed=True)
    if field_bytes[0] & 0x80:
        return int.from_bytes(bytes([field_bytes[0] & 0x7F]) + field_bytes[1:], "big")
    digits = field_bytes.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records are "<length> <key>=<value>\\n", length counting the whole record."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise LayerError("malformed PAX header") from None
        record = data[space + 1 : pos + length]
        if space < 0 or length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise LayerError("malformed PAX header")
        key, _, value = record[:-1].partition(b"=")
        records[_decode(key)] = value
        pos += length
    return records


def _apply_pax(member: Member, pax: dict[str, bytes]) -> None:
    try:
        for key, value in pax.items():
            if key == "path":
                member.name = _decode(value)
            elif key == "linkpath":
                member.linkname = _decode(value)
            elif key in ("size", "uid", "gid"):
                setattr(member, key, int(value))
            elif key == "mtime":
                member.mtime_ns = _pax_time_ns(value.decode())
            elif key.startswith("SCHILY.xattr."):
                member.xattrs[key.removeprefix("SCHILY.xattr.")] = value
    except (ValueError, UnicodeDecodeError) as exc:
        raise LayerError(f"layer entry {member.name!r}: bad PAX value: {exc}") from exc


def _pax_time_ns(text: str) -> int:
    """Exact nanoseconds of a PAX time such as "-12.5": a float would lose the last digits."""
    whole, _, fraction = text.partition(".")
    sign = -1 if whole.startswith("-") else 1
    return int(whole) * 1_000_000_000 + sign * int((fraction + "000000000")[:9])

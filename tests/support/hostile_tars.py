"""Layer tars that attack the reader: extended headers far larger than any real one.

They are built as a stream of chunks and compressed on the fly, so a test that
makes a 512 MiB PAX header holds a few MiB at most.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BLOCK = 512
PAX = b"x"
GNU_LONG_NAME = b"L"
REGULAR = b"0"
_FILL_CHUNK = 1 << 20


def raw_header(name: bytes, kind: bytes, size: int, mode: int = 0o644) -> bytes:
    """A ustar header block; size may be anything up to 8 GiB - 1 (11 octal digits)."""
    block = bytearray(BLOCK)
    block[0 : len(name[:100])] = name[:100]
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"%07o\0" % 0
    block[116:124] = b"%07o\0" % 0
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % 1_700_000_000
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _filled(total: int, byte: bytes) -> Iterator[bytes]:
    while total > 0:
        step = min(total, _FILL_CHUNK)
        yield byte * step
        total -= step


def huge_pax_tar(pax_bytes: int) -> Iterator[bytes]:
    """A PAX header of pax_bytes (one well-formed "comment" record), then a small file."""
    prefix_len = len(" comment=") + 1  # plus the newline
    digits = len(str(pax_bytes))
    value_len = pax_bytes - digits - prefix_len
    yield raw_header(b"PaxHeaders/f", PAX, pax_bytes)
    yield b"%d comment=" % pax_bytes
    yield from _filled(value_len, b"x")
    yield b"\n" + _padding(pax_bytes)
    yield from _small_file()


def long_name_tar(name_bytes: int) -> Iterator[bytes]:
    """A GNU long-name record of name_bytes (NUL included), then the file it names."""
    yield raw_header(b"././@LongLink", GNU_LONG_NAME, name_bytes)
    yield from _filled(name_bytes - 1, b"a")
    yield b"\0" + _padding(name_bytes)
    yield from _small_file()


def _small_file() -> Iterator[bytes]:
    data = b"hello\n"
    yield raw_header(b"f", REGULAR, len(data))
    yield data + _padding(len(data))
    yield b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class StreamedLayer:
    blob: bytes
    diff_id: str
    tar_size: int


def gzip_layer(chunks: Iterable[bytes]) -> StreamedLayer:
    """Compress a tar stream chunk by chunk; the diff ID is hashed on the way."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    tar_hash = hashlib.sha256()
    out: list[bytes] = []
    size = 0
    for chunk in chunks:
        tar_hash.update(chunk)
        size += len(chunk)
        out.append(compressor.compress(chunk))
    out.append(compressor.flush())
    return StreamedLayer(b"".join(out), "sha256:" + tar_hash.hexdigest(), size)


def zero_file_layer(size: int) -> StreamedLayer:
    """One file of `size` zeros (a multiple of 64 MiB) as gzip members: one compressed 64 MiB
    member repeated, so a layer that unpacks to GiBs is made in a fraction of a second."""
    piece = 64 * 1024 * 1024
    assert size % piece == 0
    zeros = b"\0" * piece
    header = raw_header(b"zeros", REGULAR, size)
    end = b"\0" * (2 * BLOCK)
    tar_hash = hashlib.sha256(header)
    for _ in range(size // piece):
        tar_hash.update(zeros)
    tar_hash.update(end)
    member = gzip_layer([zeros]).blob
    blob = gzip_layer([header]).blob + member * (size // piece) + gzip_layer([end]).blob
    return StreamedLayer(blob, "sha256:" + tar_hash.hexdigest(), len(header) + size + len(end))


def long_named_file_tar(name: bytes) -> Iterator[bytes]:
    """A small file whose name, given by a GNU long-name record, is `name`."""
    yield raw_header(b"././@LongLink", GNU_LONG_NAME, len(name) + 1)
    yield name + b"\0" + _padding(len(name) + 1)
    yield from _small_file()

"""SPDY/3.1 framing: the wire format of Kubernetes' streaming connections.

kubelet, kubectl and crictl multiplex exec, attach and port-forward streams over
one SPDY/3.1 connection (Go's moby/spdystream). Every frame starts with 8 bytes:
a control frame has the high bit set, the version (3) and a type; a data frame
has a 31-bit stream id. Both then carry 8 bits of flags and a 24-bit length.
Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib streams that share one
compression context per direction for the whole connection, primed with the
dictionary of the SPDY/3 spec and flushed (Z_SYNC_FLUSH) at the end of each block.

This module is pure: bytes in, frames out, and back. It does no flow control:
spdystream neither sends nor honours WINDOW_UPDATE, so they are parsed and ignored.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
MAX_FRAME_LENGTH = 0xFFFFFF
# Limits on what a peer may make us hold: one header block, its fields, their count.
MAX_HEADER_BLOCK = 1 << 20
MAX_HEADER_COUNT = 1000

Headers = dict[str, list[str]]


class SpdyError(ValueError):
    """The peer sent something that is not SPDY/3.1; the connection cannot go on."""


class ControlType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    CANCEL = 5
    INTERNAL_ERROR = 6


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False
    associated_to: int = 0
    priority: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    # (flags, id, value) of each entry
    entries: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = DataFrame | SynStream | SynReply | HeadersFrame | RstStream | Settings | Ping | GoAway | WindowUpdate

# The SPDY/3 header dictionary: length-prefixed common header names and values,
# then a run of status codes, dates and media types.
_DICTIONARY_WORDS = (
    b"options", b"head", b"post", b"put", b"delete", b"trace", b"accept", b"accept-charset",
    b"accept-encoding", b"accept-language", b"accept-ranges", b"age", b"allow", b"authorization",
    b"cache-control", b"connection", b"content-base", b"content-encoding", b"content-language",
    b"content-length", b"content-location", b"content-md5", b"content-range", b"content-type", b"date",
    b"etag", b"expect", b"expires", b"from", b"host", b"if-match", b"if-modified-since", b"if-none-match",
    b"if-range", b"if-unmodified-since", b"last-modified", b"location", b"max-forwards", b"pragma",
    b"proxy-authenticate", b"proxy-authorization", b"range", b"referer", b"retry-after", b"server", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"user-agent", b"vary", b"via", b"warning",
    b"www-authenticate", b"method", b"get", b"status", b"200 OK", b"version", b"HTTP/1.1", b"url", b"public",
    b"set-cookie", b"keep-alive", b"origin",
)  # fmt: skip
_DICTIONARY_TAIL = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00"
    b" Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
HEADER_DICTIONARY = b"".join(struct.pack(">I", len(word)) + word for word in _DICTIONARY_WORDS) + _DICTIONARY_TAIL


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: a count, then each lower-cased name and its
    values joined by NUL, every string prefixed with its 32-bit length."""
    parts = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        name_bytes = name.lower().encode("latin-1")
        value_bytes = b"\0".join(value.encode("latin-1") for value in values)
        parts += [struct.pack(">I", len(name_bytes)), name_bytes, struct.pack(">I", len(value_bytes)), value_bytes]
    return b"".join(parts)


def decode_header_block(block: bytes) -> Headers:
    view = memoryview(block)
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if offset + size > len(view):
            raise SpdyError("header block ends inside a field")
        chunk = bytes(view[offset : offset + size])
        offset += size
        return chunk

    def take_string() -> bytes:
        (length,) = struct.unpack(">I", take(4))
        return take(length)

    (count,) = struct.unpack(">I", take(4))
    if count > MAX_HEADER_COUNT:
        raise SpdyError(f"header block has {count} headers")
    headers: Headers = {}
    for _ in range(count):
        name = take_string().decode("latin-1")
        if not name or name != name.lower():
            raise SpdyError(f"header name {name!r} is empty or not lower case")
        if name in headers:
            raise SpdyError(f"header {name!r} appears twice")
        headers[name] = take_string().decode("latin-1").split("\0")
    if offset != len(view):
        raise SpdyError("header block has trailing bytes")
    return headers


class HeaderCompressor:
    """One direction's header compression context."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=HEADER_DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._zlib.compress(encode_header_block(headers)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(zdict=HEADER_DICTIONARY)

    def decompress(self, data: bytes) -> Headers:
        try:
            block = self._zlib.decompress(data, MAX_HEADER_BLOCK)
        except zlib.error as error:
            raise SpdyError(f"header block does not inflate: {error}") from None
        if self._zlib.unconsumed_tail:
            raise SpdyError(f"header block inflates past {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(block)


def _control_header(kind: ControlType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError(f"{kind.name} payload of {len(payload)} bytes does not fit a frame")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(payload)) + payload


def _stream_id(value: int) -> bytes:
    if not 0 < value < 1 << 31:
        raise ValueError(f"stream id {value} is out of range")
    return struct.pack(">I", value)


class FrameEncoder:
    """Frames to bytes, for one direction of one connection (header compression is stateful)."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(stream_id, data, fin):
                if len(data) > MAX_FRAME_LENGTH:
                    raise ValueError(f"data frame of {len(data)} bytes does not fit a frame")
                return _stream_id(stream_id) + struct.pack(">I", (FLAG_FIN if fin else 0) << 24 | len(data)) + data
            case SynStream(stream_id, headers, fin, unidirectional, associated_to, priority):
                flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
                fields = _stream_id(stream_id) + struct.pack(">IBB", associated_to, priority << 5, 0)
                return _control_header(ControlType.SYN_STREAM, flags, fields + self._headers.compress(headers))
            case SynReply(stream_id, headers, fin):
                payload = _stream_id(stream_id) + self._headers.compress(headers)
                return _control_header(ControlType.SYN_REPLY, FLAG_FIN if fin else 0, payload)
            case HeadersFrame(stream_id, headers, fin):
                payload = _stream_id(stream_id) + self._headers.compress(headers)
                return _control_header(ControlType.HEADERS, FLAG_FIN if fin else 0, payload)
            case RstStream(stream_id, status):
                return _control_header(ControlType.RST_STREAM, 0, _stream_id(stream_id) + struct.pack(">I", status))
            case Settings(entries):
                payload = struct.pack(">I", len(entries)) + b"".join(
                    struct.pack(">II", flags << 24 | setting_id, value) for flags, setting_id, value in entries
                )
                return _control_header(ControlType.SETTINGS, 0, payload)
            case Ping(ping_id):
                return _control_header(ControlType.PING, 0, struct.pack(">I", ping_id))
            case GoAway(last_good_stream_id, status):
                return _control_header(ControlType.GOAWAY, 0, struct.pack(">II", last_good_stream_id, status))
            case WindowUpdate(stream_id, delta):
                return _control_header(ControlType.WINDOW_UPDATE, 0, _stream_id(stream_id) + struct.pack(">I", delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")


class FrameDecoder:
    """Bytes to frames, for one direction of one connection: feed what arrives, get whole frames."""

    def __init__(self, max_frame_length: int = MAX_FRAME_LENGTH) -> None:
        self._buffer = bytearray()
        self._headers = HeaderDecompressor()
        self._max_frame_length = max_frame_length

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= 8:
            first, flags_and_length = struct.unpack_from(">II", self._buffer)
            length = flags_and_length & MAX_FRAME_LENGTH
            if length > self._max_frame_length:
                raise SpdyError(f"frame of {length} bytes is over the {self._max_frame_length} byte limit")
            if len(self._buffer) < 8 + length:
                break
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            flags = flags_and_length >> 24
            if first & 0x80000000:
                frame = self._control(first >> 16 & 0x7FFF, first & 0xFFFF, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                if first == 0:
                    raise SpdyError("data frame for stream 0")
                frames.append(DataFrame(first, payload, bool(flags & FLAG_FIN)))
        return frames

    def _control(self, version: int, kind: int, flags: int, payload: bytes) -> Frame | None:
        if version != VERSION:
            raise SpdyError(f"SPDY version {version}, not {VERSION}")
        fin = bool(flags & FLAG_FIN)
        try:
            match kind:
                case ControlType.SYN_STREAM:
                    stream_id, associated_to, priority = struct.unpack_from(">IIB", payload)
                    return SynStream(
                        _nonzero(stream_id & 0x7FFFFFFF),
                        self._headers.decompress(payload[10:]),
                        fin,
                        bool(flags & FLAG_UNIDIRECTIONAL),
                        associated_to & 0x7FFFFFFF,
                        priority >> 5,
                    )
                case ControlType.SYN_REPLY | ControlType.HEADERS:
                    (stream_id,) = struct.unpack_from(">I", payload)
                    headers = self._headers.decompress(payload[4:])
                    frame_type = SynReply if kind == ControlType.SYN_REPLY else HeadersFrame
                    return frame_type(_nonzero(stream_id & 0x7FFFFFFF), headers, fin)
                case ControlType.RST_STREAM:
                    stream_id, status = _exactly(">II", payload)
                    return RstStream(_nonzero(stream_id & 0x7FFFFFFF), status)
                case ControlType.SETTINGS:
                    (count,) = struct.unpack_from(">I", payload)
                    if len(payload) != 4 + 8 * count:
                        raise SpdyError(f"SETTINGS of {len(payload)} bytes does not hold {count} entries")
                    pairs = struct.iter_unpack(">II", payload[4:])
                    return Settings(tuple((key >> 24, key & 0xFFFFFF, value) for key, value in pairs))
                case ControlType.PING:
                    (ping_id,) = _exactly(">I", payload)
                    return Ping(ping_id)
                case ControlType.GOAWAY:
                    last_good, status = _exactly(">II", payload)
                    return GoAway(last_good & 0x7FFFFFFF, status)
                case ControlType.WINDOW_UPDATE:
                    stream_id, delta = _exactly(">II", payload)
                    return WindowUpdate(stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except struct.error:
            raise SpdyError(f"control frame of type {kind} is too short ({len(payload)} bytes)") from None
        return None  # SPDY says: ignore control frames of unknown types


def _exactly(layout: str, payload: bytes) -> tuple[int, ...]:
    if len(payload) != struct.calcsize(layout):
        raise SpdyError(f"control frame payload of {len(payload)} bytes, expected {struct.calcsize(layout)}")
    return struct.unpack(layout, payload)


def _nonzero(stream_id: int) -> int:
    if stream_id == 0:
        raise SpdyError("frame for stream 0")
    return stream_id

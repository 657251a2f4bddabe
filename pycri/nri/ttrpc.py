"""ttrpc framing: the wire format NRI's RPCs travel in.

ttrpc is containerd's small RPC protocol. Every message is a 10-byte header, then its
data: a 4-byte big-endian data length, a 4-byte stream id, a 1-byte message type and
1 byte of flags. A call is one stream: the caller sends a Request message (a protobuf
naming service and method, with the encoded argument as its payload) on a fresh odd
stream id, and the callee answers with one Response message (a status and the encoded
result) on the same id. NRI uses unary calls only, so data messages are parsed and
handed on but never made here.

This module is pure: bytes in, messages out, and back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pycri.nri.pb import ttrpc_pb2

HEADER_LENGTH = 10
# ttrpc refuses data longer than this; so does pycri, from a peer.
MAX_DATA_LENGTH = 4 << 20
MAX_STREAM_ID = 0xFFFFFFFF
_HEADER = struct.Struct(">IIBB")

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Code(enum.IntEnum):
    """The gRPC status codes ttrpc carries (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    FAILED_PRECONDITION = 9
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class TtrpcError(ValueError):
    """The peer sent something that is not ttrpc; the connection cannot go on."""


class CallFailed(Exception):
    """The callee answered with a status other than OK."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{_code_name(code)}: {message}")
        self.code = code
        self.message = message


def _code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"code {code}"


@dataclass(frozen=True)
class Message:
    stream_id: int
    type: int
    flags: int
    data: bytes


def encode_message(message: Message) -> bytes:
    if len(message.data) > MAX_DATA_LENGTH:
        raise TtrpcError(f"message of {len(message.data)} bytes is over ttrpc's {MAX_DATA_LENGTH}")
    return _HEADER.pack(len(message.data), message.stream_id, message.type, message.flags) + message.data


class MessageDecoder:
    """Bytes of one ttrpc channel in, whole messages out, however the bytes were split."""

    def __init__(self, max_data_length: int = MAX_DATA_LENGTH) -> None:
        self._buffer = bytearray()
        self._max = max_data_length

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= HEADER_LENGTH:
            length, stream_id, message_type, flags = _HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise TtrpcError(f"peer sent a message of {length} bytes, over the {self._max} allowed")
            end = HEADER_LENGTH + length
            if len(self._buffer) < end:
                break
            messages.append(Message(stream_id, message_type, flags, bytes(self._buffer[HEADER_LENGTH:end])))
            del self._buffer[:end]
        return messages

    @property
    def pending(self) -> int:
        """Bytes held back until the rest of their message arrives."""
        return len(self._buffer)


class StreamIds:
    """The ids of the streams a caller opens: odd, rising, never reused on one connection."""

    def __init__(self) -> None:
        self._next = 1

    def take(self) -> int:
        if self._next > MAX_STREAM_ID:
            raise TtrpcError("stream ids of this connection are used up")
        stream_id = self._next
        self._next += 2
        return stream_id


def request(stream_id: int, service: str, method: str, payload: bytes, timeout_ns: int = 0) -> Message:
    """A unary call; timeout_ns tells the callee how long the caller waits (0: no limit)."""
    body = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_ns)
    return Message(stream_id, MessageType.REQUEST, 0, body.SerializeToString())


def parse_request(message: Message) -> ttrpc_pb2.Request:
    if not stream_id_is_callers(message.stream_id):
        raise TtrpcError(f"request on even stream id {message.stream_id}")
    parsed = ttrpc_pb2.Request()
    try:
        parsed.ParseFromString(message.data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or worse on junk
        raise TtrpcError(f"undecodable request on stream {message.stream_id}: {exc}") from None
    return parsed


def response(stream_id: int, payload: bytes = b"", code: int = Code.OK, text: str = "") -> Message:
    body = ttrpc_pb2.Response(payload=payload)
    if code != Code.OK:
        body.status.code = code
        body.status.message = text
    return Message(stream_id, MessageType.RESPONSE, 0, body.SerializeToString())


def response_payload(message: Message) -> bytes:
    """The result a Response carries; CallFailed when its status is not OK."""
    parsed = ttrpc_pb2.Response()
    try:
        parsed.ParseFromString(message.data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or worse on junk
        raise TtrpcError(f"undecodable response on stream {message.stream_id}: {exc}") from None
    if parsed.status.code != Code.OK:
        raise CallFailed(parsed.status.code, parsed.status.message)
    return parsed.payload


def stream_id_is_callers(stream_id: int) -> bool:
    """Streams the connecting side opens are odd; ttrpc has no others yet."""
    return stream_id % 2 == 1

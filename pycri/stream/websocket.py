"""WebSocket (RFC 6455), server side: the handshake key, the frame codec, and a connection
that hands out whole messages. No extensions (the RSV bits must be clear)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import struct
from collections import deque
from dataclasses import dataclass

from pycri.stream.limits import ConnectionLimits, IdleWatch

MAX_MESSAGE_SIZE = ConnectionLimits.websocket_max_message_bytes
CLOSE_WAIT_SECONDS = 5.0
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    TOO_BIG = 1009


class WebSocketError(ValueError):
    """The peer broke the protocol; `code` is the close code to answer with."""

    def __init__(self, message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Opcode(enum.IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


@dataclass(frozen=True)
class WsFrame:
    fin: bool
    opcode: Opcode
    payload: bytes


def accept_key(client_key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(client_key.strip().encode() + _ACCEPT_GUID).digest()).decode()


def _xor(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def encode_frame(opcode: Opcode, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. Servers send unmasked frames; `mask` is for playing the client (tests)."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask is not None else 0
    size = len(payload)
    if size < 126:
        head = struct.pack(">BB", first, mask_bit | size)
    elif size < 1 << 16:
        head = struct.pack(">BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack(">BBQ", first, mask_bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + _xor(payload, mask)


class FrameParser:
    """Bytes from a client to frames; client frames must be masked."""

    def __init__(self, max_payload: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    def feed(self, data: bytes) -> list[WsFrame]:
        self._buffer += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> WsFrame | None:
        if len(self._buffer) < 2:
            return None
        first, second = self._buffer[0], self._buffer[1]
        if first & 0x70:
            raise WebSocketError("reserved bits set: no extension was negotiated")
        try:
            opcode = Opcode(first & 0x0F)
        except ValueError:
            raise WebSocketError(f"unknown opcode {first & 0x0F}") from None
        fin = bool(first & 0x80)
        if not second & 0x80:
            raise WebSocketError("client frame is not masked")
        size, offset = second & 0x7F, 2
        if size >= 126:
            wide = ">H" if size == 126 else ">Q"
            offset += struct.calcsize(wide)
            if len(self._buffer) < offset:
                return None
            (size,) = struct.unpack_from(wide, self._buffer, 2)
        if opcode >= Opcode.CLOSE and (size > 125 or not fin):
            raise WebSocketError("control frame is fragmented or longer than 125 bytes")
        if size > self._max_payload:
            raise WebSocketError(f"frame of {size} bytes is over the limit", CloseCode.TOO_BIG)
        if len(self._buffer) < offset + 4 + size:
            return None
        mask = bytes(self._buffer[offset : offset + 4])
        payload = _xor(bytes(self._buffer[offset + 4 : offset + 4 + size]), mask)
        del self._buffer[: offset + 4 + size]
        return WsFrame(fin, opcode, payload)


class WebSocket:
    """A server-side connection after the handshake. One task at a time calls `receive`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subprotocol: str,
        max_message_size: int = MAX_MESSAGE_SIZE, idle: IdleWatch | None = None,
    ) -> None:  # fmt: skip
        self.subprotocol = subprotocol
        self._reader = reader
        self._writer = writer
        self._max_message_size = max_message_size
        self._idle = idle
        self._parser = FrameParser(max_message_size)
        self._pending: deque[WsFrame] = deque()
        # The message being reassembled: its fragments and their total size (kept, not re-summed).
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragment_opcode = Opcode.BINARY
        self._close_sent = False
        self._receiving = False
        self._peer_gone = asyncio.Event()

    async def receive(self) -> tuple[Opcode, bytes] | None:
        """The next text or binary message; None once the peer closed or broke the protocol.
        Pings are answered here, so someone should keep receiving."""
        self._receiving = True
        try:
            return await self._receive()
        except WebSocketError as error:
            self.send_close(error.code)
            self._peer_gone.set()
            return None
        finally:
            self._receiving = False

    async def _receive(self) -> tuple[Opcode, bytes] | None:
        while not self._peer_gone.is_set():
            if not self._pending:
                try:
                    data = await self._reader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    break
                if self._idle is not None:
                    self._idle.touch()
                self._pending.extend(self._parser.feed(data))
                continue
            frame = self._pending.popleft()
            match frame.opcode:
                case Opcode.PING:
                    self._send(Opcode.PONG, frame.payload)
                case Opcode.PONG:
                    pass
                case Opcode.CLOSE:
                    self.send_close(CloseCode.NORMAL)
                    break
                case Opcode.CONTINUATION:
                    if not self._fragments:
                        raise WebSocketError("continuation frame without a message to continue")
                    message = self._collect(frame)
                    if message is not None:
                        return message
                case _:
                    if self._fragments:
                        raise WebSocketError("new message before the last one ended")
                    self._fragment_opcode = frame.opcode
                    self._fragments = [b""]
                    self._fragments_size = 0
                    message = self._collect(frame)
                    if message is not None:
                        return message
        self._peer_gone.set()
        return None

    def _collect(self, frame: WsFrame) -> tuple[Opcode, bytes] | None:
        self._fragments_size += len(frame.payload)
        if self._fragments_size > self._max_message_size:
            raise WebSocketError(f"message is over the {self._max_message_size} byte limit", CloseCode.TOO_BIG)
        self._fragments.append(frame.payload)
        if not frame.fin:
            return None
        message = b"".join(self._fragments)
        self._fragments = []
        self._fragments_size = 0
        return self._fragment_opcode, message

    def send(self, payload: bytes, opcode: Opcode = Opcode.BINARY) -> None:
        if not self._close_sent:
            self._send(opcode, payload)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def close(self, code: CloseCode = CloseCode.NORMAL) -> None:
        """Send a close frame, wait (bounded) for the peer to close, then drop the connection."""
        self.send_close(code)
        await self.drain()
        with contextlib.suppress(TimeoutError):
            if self._receiving:
                await asyncio.wait_for(self._peer_gone.wait(), CLOSE_WAIT_SECONDS)
            else:
                await asyncio.wait_for(self._discard_until_closed(), CLOSE_WAIT_SECONDS)
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection."""
        self._writer.close()

    async def _discard_until_closed(self) -> None:
        while await self.receive() is not None:
            pass

    def send_close(self, code: CloseCode = CloseCode.NORMAL) -> None:
        """Start the closing handshake (once); receiving goes on until the peer answers."""
        if not self._close_sent:
            self._send(Opcode.CLOSE, struct.pack(">H", code))
            self._close_sent = True

    def _send(self, opcode: Opcode, payload: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(encode_frame(opcode, payload))
            if self._idle is not None:
                self._idle.touch()


class WebSocketByteStream:
    """A byte pipe over binary messages: what SPDY runs on when tunnelled through a WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def read(self) -> bytes:
        while (message := await self._websocket.receive()) is not None:
            if message[1]:
                return message[1]
        return b""

    def write(self, data: bytes) -> None:
        self._websocket.send(data)

    async def drain(self) -> None:
        await self._websocket.drain()

    def close_write(self) -> None:
        self._websocket.send_close()

    def close(self) -> None:
        self._websocket.abort()


class ChannelWebSocket:
    """Kubernetes' channels on a WebSocket: each message starts with its channel number, a byte
    in binary messages, or an ASCII digit in the base64 variants (text messages, base64 data)."""

    def __init__(self, websocket: WebSocket, base64_text: bool) -> None:
        self.websocket = websocket
        self._base64 = base64_text

    def send(self, channel: int, data: bytes) -> None:
        if self._base64:
            self.websocket.send(str(channel).encode() + base64.b64encode(data), Opcode.TEXT)
        else:
            self.websocket.send(bytes([channel]) + data)

    async def receive(self) -> tuple[int, bytes] | None:
        """The next message's channel and data (channel -1: a message that names none); None at the end."""
        message = await self.websocket.receive()
        if message is None:
            return None
        payload = message[1]
        if not payload:
            return -1, b""
        if not self._base64:
            return payload[0], payload[1:]
        try:
            return int(chr(payload[0])), base64.b64decode(payload[1:], validate=True)
        except (ValueError, binascii.Error):
            return -1, b""

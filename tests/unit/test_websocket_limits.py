"""A WebSocket connection over a socket pair: fragmented messages up to the cap arrive whole,
one byte more closes the connection with 1009; an idle connection is dropped."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from pycri.stream.limits import IdleWatch
from pycri.stream.websocket import MAX_MESSAGE_SIZE, CloseCode, Opcode, WebSocket, encode_frame

pytestmark = pytest.mark.unit

WAIT = 30.0
MASK = b"\x01\x02\x03\x04"
FRAGMENT = 4096


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def send_fragmented(self, message: bytes) -> None:
        """`message` as a binary message cut into FRAGMENT-byte frames."""
        pieces = [message[start : start + FRAGMENT] for start in range(0, len(message), FRAGMENT)]
        for index, piece in enumerate(pieces):
            opcode = Opcode.BINARY if index == 0 else Opcode.CONTINUATION
            self.writer.write(encode_frame(opcode, piece, fin=index == len(pieces) - 1, mask=MASK))

    async def close_code(self) -> int:
        """The code of the server's close frame (skipping anything before it)."""
        while True:
            head = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
            size = head[1] & 0x7F
            if size == 126:
                (size,) = struct.unpack(">H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack(">Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(size)
            if head[0] & 0x0F == Opcode.CLOSE:
                return int(struct.unpack(">H", payload[:2])[0])


@dataclass
class Pair:
    server: WebSocket
    client: Client


async def connected(max_message_size: int = MAX_MESSAGE_SIZE, idle: IdleWatch | None = None) -> Pair:
    server_socket, client_socket = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_socket)
    client = Client(*await asyncio.open_connection(sock=client_socket))
    return Pair(WebSocket(reader, writer, "", max_message_size, idle), client)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    made = await connected()
    yield made
    made.server.abort()
    made.client.writer.close()


async def test_a_fragmented_message_of_the_caps_size_arrives_whole(pair: Pair) -> None:
    message = bytes(range(256)) * (MAX_MESSAGE_SIZE // 256)
    assert len(message) == MAX_MESSAGE_SIZE
    pair.client.send_fragmented(message)
    received = await asyncio.wait_for(pair.server.receive(), WAIT)
    assert received == (Opcode.BINARY, message)


async def test_one_byte_over_the_cap_closes_with_1009(pair: Pair) -> None:
    pair.client.send_fragmented(b"x" * (MAX_MESSAGE_SIZE + 1))
    assert await asyncio.wait_for(pair.server.receive(), WAIT) is None
    assert await pair.client.close_code() == CloseCode.TOO_BIG == 1009


async def test_a_configured_cap_is_the_limit() -> None:
    made = await connected(max_message_size=10_000)
    made.client.send_fragmented(b"a" * 10_000)
    assert await asyncio.wait_for(made.server.receive(), WAIT) == (Opcode.BINARY, b"a" * 10_000)
    made.client.send_fragmented(b"b" * 10_001)
    assert await asyncio.wait_for(made.server.receive(), WAIT) is None
    assert await made.client.close_code() == 1009
    made.server.abort()


async def test_control_frames_between_fragments_are_answered_and_the_message_survives(pair: Pair) -> None:
    writer = pair.client.writer
    writer.write(encode_frame(Opcode.TEXT, b"he", fin=False, mask=MASK))
    writer.write(encode_frame(Opcode.PING, b"p", mask=MASK))
    writer.write(encode_frame(Opcode.CONTINUATION, b"llo", mask=MASK))
    assert await asyncio.wait_for(pair.server.receive(), WAIT) == (Opcode.TEXT, b"hello")
    assert await asyncio.wait_for(pair.client.reader.readexactly(3), WAIT) == b"\x8a\x01p"


async def test_an_idle_connection_is_dropped() -> None:
    dropped = asyncio.Event()
    idle = IdleWatch(0.2, dropped.set)
    made = await connected(idle=idle)
    watching = asyncio.create_task(idle.run())
    made.client.writer.write(encode_frame(Opcode.BINARY, b"hi", mask=MASK))
    assert await asyncio.wait_for(made.server.receive(), WAIT) == (Opcode.BINARY, b"hi")
    await asyncio.wait_for(dropped.wait(), WAIT)
    await asyncio.wait_for(watching, WAIT)
    made.server.abort()

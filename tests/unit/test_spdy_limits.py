"""A SPDY connection's bounds: streams past the cap are refused, and a client that sends
without anybody reading fills each stream's buffer only up to its cap (then the session
stops reading the socket) and loses nothing once the reader catches up."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from pycri.stream.limits import ConnectionLimits
from pycri.stream.spdy import DataFrame, FrameDecoder, FrameEncoder, RstStatus, RstStream, SynStream
from pycri.stream.spdy_session import SpdySession, SpdyStream, TcpByteStream
from tests.unit.test_spdy_session import WAIT, Connection, Peer

pytestmark = pytest.mark.unit

MAX_STREAMS = 3
BUFFER = 64 * 1024
CHUNK = 16 * 1024


@pytest.fixture
async def bounded() -> AsyncIterator[Connection]:
    server_socket, client_socket = socket.socketpair()
    limits = ConnectionLimits(spdy_max_streams=MAX_STREAMS, spdy_stream_buffer_bytes=BUFFER)
    session = SpdySession(TcpByteStream(*await asyncio.open_connection(sock=server_socket)), limits)
    reader, writer = await asyncio.open_connection(sock=client_socket)
    serving = asyncio.create_task(session.serve())
    yield Connection(session, serving, Peer(reader, writer, FrameEncoder(), FrameDecoder(), []))
    serving.cancel()
    writer.close()
    server_socket.close()


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT)


async def accept(connection: Connection) -> SpdyStream:
    stream = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert stream is not None
    return stream


async def test_streams_past_the_cap_are_refused(bounded: Connection) -> None:
    bounded.peer.send(*(SynStream(stream_id, {}) for stream_id in (1, 3, 5, 7, 9)))
    assert await bounded.peer.next_frame() == RstStream(7, RstStatus.REFUSED_STREAM)
    assert await bounded.peer.next_frame() == RstStream(9, RstStatus.REFUSED_STREAM)
    first = await accept(bounded)
    # Once both sides have finished a stream, its place is free again.
    bounded.peer.send(DataFrame(1, b"", fin=True))
    assert await asyncio.wait_for(first.read(), WAIT) == b""
    first.close()
    assert await bounded.peer.next_frame() == DataFrame(1, b"", fin=True)
    bounded.peer.send(SynStream(11, {}), SynStream(13, {}))
    assert await bounded.peer.next_frame() == RstStream(13, RstStatus.REFUSED_STREAM)
    assert [(await accept(bounded)).id for _ in range(3)] == [3, 5, 11]


async def test_a_client_that_sends_without_reading_fills_only_the_buffer(bounded: Connection) -> None:
    sent = bytes(range(256)) * (40 * BUFFER // 256)
    bounded.peer.send(SynStream(1, {}), SynStream(3, {}))
    bounded.peer.send(*(DataFrame(1, sent[start : start + CHUNK]) for start in range(0, len(sent), CHUNK)))
    bounded.peer.send(DataFrame(3, b"behind the full stream"), DataFrame(1, b"", fin=True))
    slow = await accept(bounded)
    await until(lambda: bounded.session.buffered_bytes == BUFFER)
    received = bytearray()
    while chunk := await asyncio.wait_for(slow.read(), WAIT):
        assert slow.buffered <= BUFFER
        assert bounded.session.buffered_bytes <= MAX_STREAMS * BUFFER
        received += chunk
    assert received == sent
    behind = await accept(bounded)
    assert await asyncio.wait_for(behind.read(), WAIT) == b"behind the full stream"


async def test_a_data_frame_larger_than_the_buffer_ends_the_connection(bounded: Connection) -> None:
    bounded.peer.send(SynStream(1, {}), DataFrame(1, b"x" * (BUFFER + 1)))
    await asyncio.wait_for(bounded.serving, WAIT)
    assert bounded.session.buffered_bytes == 0

"""The SPDY session, server side, over a socket pair: replies, data both ways, FIN and RST, pings, the end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from pycri.stream.spdy import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAway,
    Ping,
    RstStatus,
    RstStream,
    SynReply,
    SynStream,
)
from pycri.stream.spdy_session import DATA_FRAME_SIZE, SpdySession, TcpByteStream

pytestmark = pytest.mark.unit

WAIT = 10.0


@dataclass
class Peer:
    """The client's end: raw frames."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    encoder: FrameEncoder
    decoder: FrameDecoder
    pending: list[Frame]

    def send(self, *frames: Frame) -> None:
        for frame in frames:
            self.writer.write(self.encoder.encode(frame))

    async def next_frame(self) -> Frame | None:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            if not data:
                return None
            self.pending = self.decoder.feed(data)
        return self.pending.pop(0)


@dataclass
class Connection:
    session: SpdySession
    serving: asyncio.Task[None]
    peer: Peer


@pytest.fixture
async def connection() -> AsyncIterator[Connection]:
    server_socket, client_socket = socket.socketpair()
    session = SpdySession(TcpByteStream(*await asyncio.open_connection(sock=server_socket)))
    reader, writer = await asyncio.open_connection(sock=client_socket)
    serving = asyncio.create_task(session.serve())
    yield Connection(session, serving, Peer(reader, writer, FrameEncoder(), FrameDecoder(), []))
    serving.cancel()
    writer.close()
    server_socket.close()


async def test_streams_are_accepted_and_replied(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {"streamtype": ["stdout"], "port": ["80"]}))
    stream = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert stream is not None
    assert (stream.id, stream.stream_type, stream.header("Port")) == (1, "stdout", "80")
    stream.reply()
    assert await connection.peer.next_frame() == SynReply(1, {})


async def test_client_data_reaches_the_stream_until_fin(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {}), DataFrame(1, b"ab"), DataFrame(1, b"cd", fin=True))
    stream = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert stream is not None
    received = b""
    while chunk := await asyncio.wait_for(stream.read(), WAIT):
        received += chunk
    assert received == b"abcd"


async def test_writes_are_cut_into_frames_and_closed_with_fin(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {}))
    stream = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert stream is not None
    await stream.write(b"x" * (DATA_FRAME_SIZE + 10))
    stream.close()
    stream.close()  # once only
    await stream.write(b"after the end")
    frames = [await connection.peer.next_frame() for _ in range(3)]
    assert frames == [DataFrame(1, b"x" * DATA_FRAME_SIZE), DataFrame(1, b"x" * 10), DataFrame(1, b"", fin=True)]


async def test_a_reset_ends_reading_and_drops_writes(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {}), SynStream(3, {}))
    first = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert first is not None
    connection.peer.send(RstStream(1, RstStatus.CANCEL))
    assert await asyncio.wait_for(first.read(), WAIT) == b""
    await first.write(b"dropped")
    second = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert second is not None
    await second.write(b"kept")
    assert await connection.peer.next_frame() == DataFrame(3, b"kept")


async def test_our_reset_is_sent(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {}))
    stream = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert stream is not None
    stream.reset(RstStatus.REFUSED_STREAM)
    assert await connection.peer.next_frame() == RstStream(1, RstStatus.REFUSED_STREAM)
    assert await asyncio.wait_for(stream.read(), WAIT) == b""


async def test_client_pings_are_echoed(connection: Connection) -> None:
    connection.peer.send(Ping(2), Ping(7))
    assert await connection.peer.next_frame() == Ping(7)


async def test_streams_with_even_or_repeated_ids_are_refused(connection: Connection) -> None:
    connection.peer.send(SynStream(3, {}), SynStream(2, {}), SynStream(1, {}))
    assert await connection.peer.next_frame() == RstStream(2, RstStatus.PROTOCOL_ERROR)
    assert await connection.peer.next_frame() == RstStream(1, RstStatus.PROTOCOL_ERROR)


async def test_garbage_ends_the_connection_with_a_protocol_error(connection: Connection) -> None:
    connection.peer.writer.write(b"\x80\x02\x00\x01\x00\x00\x00\x00")  # SPDY/2
    assert await connection.peer.next_frame() == GoAway(0, 1)
    await asyncio.wait_for(connection.serving, WAIT)
    assert connection.session.closed.is_set()
    assert await connection.session.accept() is None


async def test_the_client_hanging_up_ends_every_stream(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {}))
    stream = await asyncio.wait_for(connection.session.accept(), WAIT)
    assert stream is not None
    connection.peer.writer.close()
    assert await asyncio.wait_for(stream.read(), WAIT) == b""
    await asyncio.wait_for(connection.session.closed.wait(), WAIT)


async def test_close_says_goaway_and_waits_for_the_client(connection: Connection) -> None:
    connection.peer.send(SynStream(1, {}), SynStream(3, {}))
    for _ in range(2):
        await asyncio.wait_for(connection.session.accept(), WAIT)
    closing = asyncio.create_task(connection.session.close(connection.serving))
    assert await connection.peer.next_frame() == GoAway(3, 0)
    assert await connection.peer.next_frame() is None  # our side is shut
    connection.peer.send(Ping(9))  # dropped: our side is closed for writing
    connection.peer.writer.close()
    await asyncio.wait_for(closing, WAIT)

"""A SPDY/3.1 connection, server side: the streams a client opens, their data both ways, an orderly end.

The client opens every stream (odd ids); the server answers each SYN_STREAM with a
SYN_REPLY (`SpdyStream.reply`) or refuses it (`SpdyStream.reset`). Frames are encoded
and handed to the transport in one synchronous step, so their order on the wire is
the order of the calls even when many tasks write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

from pycri.stream.limits import ConnectionLimits, IdleWatch
from pycri.stream.spdy import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAway,
    Headers,
    Ping,
    RstStatus,
    RstStream,
    SpdyError,
    SynReply,
    SynStream,
)

log = logging.getLogger(__name__)

DATA_FRAME_SIZE = 32 * 1024
# How long an ending connection waits for the client to close its side.
CLOSE_WAIT_SECONDS = 5.0
GOAWAY_PROTOCOL_ERROR = 1
MIN_FRAME_LIMIT = 64 * 1024
DEFAULT_LIMITS = ConnectionLimits()


class ByteStream(Protocol):
    """A bidirectional byte pipe the session runs over: a TCP connection, or a WebSocket tunnel."""

    async def read(self) -> bytes:
        """The next bytes; b"" once the peer has closed its side (or the connection broke)."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close_write(self) -> None:
        """Tell the peer nothing more comes; reading goes on."""
        ...

    def close(self) -> None: ...


class TcpByteStream:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: IdleWatch | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._idle = idle
        self._write_closed = False

    async def read(self) -> bytes:
        try:
            data = await self._reader.read(65536)
        except ConnectionError:
            return b""
        if data and self._idle is not None:
            self._idle.touch()
        return data

    def write(self, data: bytes) -> None:
        if not self._write_closed and not self._writer.is_closing():
            self._writer.write(data)
            if self._idle is not None:
                self._idle.touch()

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close_write(self) -> None:
        if not self._write_closed and not self._writer.is_closing() and self._writer.can_write_eof():
            with contextlib.suppress(OSError):
                self._writer.write_eof()
        self._write_closed = True

    def close(self) -> None:
        self._writer.close()


class SpdyStream:
    """One stream the client opened. Reads return b"" once the client has finished it (FIN,
    RST or the connection's end); writes after our FIN, a reset or the end are dropped."""

    def __init__(self, session: SpdySession, stream_id: int, headers: Headers, client_done: bool) -> None:
        self._session = session
        self.id = stream_id
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._client_done = client_done
        self._we_are_done = False
        self._changed = asyncio.Event()

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    @property
    def buffered(self) -> int:
        """Client bytes received and not read yet."""
        return self._buffered

    @property
    def stream_type(self) -> str:
        return self.header("streamtype")

    def reply(self) -> None:
        self._session.send(SynReply(self.id, {}))

    def reset(self, status: RstStatus = RstStatus.CANCEL) -> None:
        if not (self._we_are_done and self._client_done):
            self._session.send(RstStream(self.id, status))
        self._we_are_done = True
        self._end()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._client_done:
                return b""
            self._changed.clear()
            await self._changed.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._changed.set()
        return chunk

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), DATA_FRAME_SIZE):
            if self._we_are_done or self._session.closed.is_set():
                return
            self._session.send(DataFrame(self.id, data[start : start + DATA_FRAME_SIZE]))
            await self._session.drain()

    def close(self) -> None:
        """Half-close: FIN on our side (once)."""
        if not self._we_are_done:
            self._we_are_done = True
            self._session.send(DataFrame(self.id, b"", fin=True))
            self._forget_when_done()

    # ---- for the session ----

    async def _receive(self, data: bytes) -> None:
        """Buffer `data` once there is room; until then the session reads nothing more (backpressure)."""
        while self._buffered and self._buffered + len(data) > self._session.stream_buffer_limit:
            if self._client_done:
                return
            self._changed.clear()
            await self._changed.wait()
        if self._client_done or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._changed.set()

    def _end(self) -> None:
        self._client_done = True
        self._changed.set()
        self._forget_when_done()

    def _forget_when_done(self) -> None:
        if self._we_are_done and self._client_done:
            self._session._forget(self.id)

    def _reset_by_client(self) -> None:
        self._we_are_done = True
        self._end()


class SpdySession:
    def __init__(self, transport: ByteStream, limits: ConnectionLimits = DEFAULT_LIMITS) -> None:
        self._transport = transport
        self._max_streams = limits.spdy_max_streams
        self.stream_buffer_limit = limits.spdy_stream_buffer_bytes
        self._encoder = FrameEncoder()
        # A data frame is buffered whole, so none may be larger than a stream's buffer; control
        # frames (compressed header blocks) get at least the room SPDY's own limits need.
        self._decoder = FrameDecoder(max(self.stream_buffer_limit, MIN_FRAME_LIMIT))
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._last_stream_id = 0
        self._going_away = False
        # Set when the client's side of the connection has ended.
        self.closed = asyncio.Event()

    def send(self, frame: Frame) -> None:
        if not self.closed.is_set():
            self._transport.write(self._encoder.encode(frame))

    async def drain(self) -> None:
        await self._transport.drain()

    @property
    def buffered_bytes(self) -> int:
        """Client data held for streams nobody has read yet."""
        return sum(stream.buffered for stream in self._streams.values())

    async def accept(self) -> SpdyStream | None:
        """The next stream the client opens; None once the connection is over."""
        if self._incoming.empty() and self.closed.is_set():
            return None
        return await self._incoming.get()

    async def serve(self) -> None:
        """Read frames until the client closes the connection or breaks the protocol."""
        try:
            while chunk := await self._transport.read():
                for frame in self._decoder.feed(chunk):
                    await self._handle(frame)
        except SpdyError as error:
            log.info("bad SPDY from a streaming client", extra={"fields": {"error": str(error)}})
            self.send(GoAway(self._last_stream_id, GOAWAY_PROTOCOL_ERROR))
        finally:
            self.closed.set()
            for stream in list(self._streams.values()):
                stream._end()
            self._incoming.put_nowait(None)

    async def close(self, serving: asyncio.Task[None]) -> None:
        """End the connection: GOAWAY, then wait (bounded) for the client to hang up."""
        if not self._going_away:
            self._going_away = True
            self.send(GoAway(self._last_stream_id))
        await self.drain()
        self._transport.close_write()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(serving), CLOSE_WAIT_SECONDS)
        serving.cancel()
        self._transport.close()

    def _forget(self, stream_id: int) -> None:
        """Drop a stream both sides have finished (a long port-forward opens many)."""
        self._streams.pop(stream_id, None)

    async def _handle(self, frame: Frame) -> None:
        match frame:
            case SynStream(stream_id, headers, fin):
                if stream_id % 2 == 0 or stream_id <= self._last_stream_id or self._going_away:
                    self.send(RstStream(stream_id, RstStatus.PROTOCOL_ERROR))
                    return
                self._last_stream_id = stream_id
                if len(self._streams) >= self._max_streams:
                    log.info("SPDY stream refused: too many open", extra={"fields": {"limit": self._max_streams}})
                    self.send(RstStream(stream_id, RstStatus.REFUSED_STREAM))
                    return
                stream = SpdyStream(self, stream_id, headers, client_done=fin)
                self._streams[stream_id] = stream
                self._incoming.put_nowait(stream)
            case DataFrame(stream_id, data, fin):
                known = self._streams.get(stream_id)
                if known is not None:
                    await known._receive(data)
                    if fin:
                        known._end()
            case RstStream(stream_id):
                reset = self._streams.pop(stream_id, None)
                if reset is not None:
                    reset._reset_by_client()
            case Ping(ping_id) if ping_id % 2 == 1:
                self.send(Ping(ping_id))  # the client's ping: echo it
            case GoAway():
                self._going_away = True

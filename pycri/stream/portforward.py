"""Port forwarding: client streams to TCP ports on localhost inside the pod's network namespace.

Over SPDY (protocol portforward.k8s.io) the client opens a pair of streams per forwarded
connection, both with headers `port` and `requestID`: `streamType: error` and
`streamType: data`. Over a WebSocket (kubelet's v4 channels) channel 2i carries the
data of the request's i-th port and 2i+1 its errors; the server's first message on each
is the port, 16 bits little-endian. crictl's WebSocket mode instead tunnels SPDY
itself through the WebSocket (subprotocol "SPDY/3.1+portforward.k8s.io").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pycri.network.netns import enter_namespace, run_in_disposable_thread
from pycri.stream.limits import WEBSOCKET_QUEUED_MESSAGES
from pycri.stream.spdy import RstStatus
from pycri.stream.spdy_session import SpdySession, SpdyStream
from pycri.stream.websocket import ChannelWebSocket

log = logging.getLogger(__name__)

SPDY_PROTOCOLS = ("portforward.k8s.io",)
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
# WebSocket subprotocol -> its channel data is base64 text.
WEBSOCKET_PROTOCOLS = {"v4.channel.k8s.io": False, "v4.base64.channel.k8s.io": True, "": False}
PAIR_CREATION_TIMEOUT = 30.0
READ_SIZE = 32 * 1024

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
PodConnector = Callable[[int], Awaitable[Connection]]


async def connect_in_netns(netns: Path | None, port: int) -> Connection:
    """A TCP connection to localhost:`port` in the network namespace pinned at `netns`
    (None: the host's): 127.0.0.1 first, then ::1."""
    loop = asyncio.get_running_loop()
    first_error: OSError | None = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = await asyncio.to_thread(_socket_in, netns, family)
        except OSError as error:
            first_error = first_error or error
            continue
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock)
        except OSError as error:
            sock.close()
            first_error = first_error or error
    assert first_error is not None
    raise first_error


def _socket_in(netns: Path | None, family: int) -> socket.socket:
    if netns is None:
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    def make() -> socket.socket:
        enter_namespace(netns, "net")
        # A socket belongs to the namespace it was made in, whichever thread uses it later.
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    return run_in_disposable_thread(make)


async def _relay(
    read_client: Callable[[], Awaitable[bytes]], write_client: Callable[[bytes], Awaitable[None]], pod: Connection
) -> None:
    """Copy both ways, passing each side's end on as a half-close, until both have ended."""
    reader, writer = pod

    async def to_pod() -> None:
        with contextlib.suppress(ConnectionError):
            while data := await read_client():
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def from_pod() -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(READ_SIZE):
                await write_client(data)

    await asyncio.gather(to_pod(), from_pod())


def _error_message(port: int, pod: str, error: OSError) -> bytes:
    reason = os.strerror(error.errno) if error.errno else str(error)
    message = f"error forwarding port {port} to pod {pod}, uid : connect to localhost:{port} in the pod: {reason}"
    return json.dumps({"closeConnection": True, "message": message}).encode() + b"\n"


@dataclass
class _StreamPair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


async def serve_spdy(session: SpdySession, pod: str, connect: PodConnector) -> None:
    """Pair the client's streams by request id and forward each complete pair, until the client hangs up."""
    pairs: dict[str, _StreamPair] = {}
    forwards: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    def expire(pair: _StreamPair) -> None:
        if pairs.pop(pair.request_id, None) is not None:
            log.info("port-forward stream pair never completed", extra={"fields": {"request": pair.request_id}})
            for stream in (pair.data, pair.error):
                if stream is not None:
                    stream.reset()

    try:
        while (stream := await session.accept()) is not None:
            port = stream.header("port")
            if not (port.isdigit() and 0 < int(port) < 1 << 16) or stream.stream_type not in ("data", "error"):
                log.info("port-forward stream refused", extra={"fields": {"port": port, "type": stream.stream_type}})
                stream.reset(RstStatus.REFUSED_STREAM)
                continue
            stream.reply()
            request_id = _request_id(stream)
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _StreamPair(request_id)
                pair.expiry = loop.call_later(PAIR_CREATION_TIMEOUT, expire, pair)
            if getattr(pair, stream.stream_type) is not None:
                stream.reset(RstStatus.PROTOCOL_ERROR)
                continue
            setattr(pair, stream.stream_type, stream)
            if pair.data is not None and pair.error is not None:
                del pairs[request_id]
                if pair.expiry is not None:
                    pair.expiry.cancel()
                task = asyncio.create_task(_forward_pair(pair.data, pair.error, pod, connect))
                forwards.add(task)
                task.add_done_callback(forwards.discard)
    finally:
        for pending in pairs.values():
            if pending.expiry is not None:
                pending.expiry.cancel()
        for task in list(forwards):
            task.cancel()


def _request_id(stream: SpdyStream) -> str:
    """The requestID header; older clients send none, and then their stream ids pair up
    (error stream n, data stream n+2), as kubelet assumes too."""
    request_id = stream.header("requestid")
    if request_id:
        return request_id
    return str(stream.id if stream.stream_type == "error" else stream.id - 2)


async def _forward_pair(data: SpdyStream, error: SpdyStream, pod: str, connect: PodConnector) -> None:
    port = int(data.header("port"))
    try:
        try:
            connection = await connect(port)
        except OSError as failure:
            log.info("port-forward connect failed", extra={"fields": {"pod": pod, "port": port, "error": str(failure)}})
            await error.write(_error_message(port, pod, failure))
            return
        try:
            await _relay(data.read, data.write, connection)
        finally:
            connection[1].close()
    finally:
        data.close()
        error.close()


async def serve_websocket(channels: ChannelWebSocket, ports: list[int], pod: str, connect: PodConnector) -> None:
    """One connection per port of the request, each on its pair of channels, for as long as the WebSocket lasts."""
    inputs: list[asyncio.Queue[bytes]] = [asyncio.Queue(maxsize=WEBSOCKET_QUEUED_MESSAGES) for _ in ports]
    for index, port in enumerate(ports):
        channels.send(2 * index, struct.pack("<H", port))
        channels.send(2 * index + 1, struct.pack("<H", port))

    async def forward(index: int, port: int) -> None:
        async def write(data: bytes) -> None:
            channels.send(2 * index, data)
            await channels.websocket.drain()

        try:
            connection = await connect(port)
        except OSError as failure:
            channels.send(2 * index + 1, _error_message(port, pod, failure))
            return
        try:
            await _relay(inputs[index].get, write, connection)
        finally:
            connection[1].close()

    forwards = [asyncio.create_task(forward(index, port)) for index, port in enumerate(ports)]
    try:
        while (message := await channels.receive()) is not None:
            channel, data = message
            if channel >= 0 and channel % 2 == 0 and channel // 2 < len(ports) and data:
                await inputs[channel // 2].put(data)
    finally:
        for queue in inputs:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(b"")
        for task in forwards:
            task.cancel()
        await channels.websocket.close()

"""The streaming HTTP server: one-time URLs (/exec/<token>, /attach/<token>, /portforward/<token>)
that a client upgrades to SPDY/3.1 or to a WebSocket.

HTTP here is only the upgrade request, so the server reads one request head and either
answers with an error or switches protocols on the same connection. (aiohttp does not
fit: its parser lets only WebSocket upgrades through, and SPDY/3.1 is what crictl sends.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from pycri import telemetry
from pycri.api import api_pb2
from pycri.stream import portforward, remotecommand
from pycri.stream.limits import ConnectionLimits, IdleWatch
from pycri.stream.remotecommand import CommandStreams, Outcome, StreamOptions
from pycri.stream.spdy_session import DEFAULT_LIMITS, ByteStream, SpdySession, TcpByteStream
from pycri.stream.tokens import TokenCache
from pycri.stream.websocket import ChannelWebSocket, WebSocket, WebSocketByteStream, accept_key

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 64 * 1024
REQUEST_HEAD_TIMEOUT = 30.0

CommandRequest = api_pb2.ExecRequest | api_pb2.AttachRequest
StreamRequest = CommandRequest | api_pb2.PortForwardRequest
_REQUEST_TYPES: dict[str, type[StreamRequest]] = {
    "exec": api_pb2.ExecRequest,
    "attach": api_pb2.AttachRequest,
    "portforward": api_pb2.PortForwardRequest,
}


class SessionRunner(Protocol):
    """What the server needs from the daemon once a client has come for its URL."""

    async def run_command(self, request: CommandRequest, streams: CommandStreams) -> Outcome: ...

    def pod_connector(self, request: api_pb2.PortForwardRequest) -> tuple[str, portforward.PodConnector]:
        """The pod's id and how to reach its ports; OSError when the pod is gone."""
        ...


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle: IdleWatch


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]  # lower-case names

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0].strip() if values else ""

    def header_tokens(self, name: str) -> list[str]:
        """Every comma-separated value of every line of a header."""
        return [item.strip() for line in self.headers.get(name.lower(), []) for item in line.split(",") if item.strip()]


def parse_request_head(head: bytes) -> HttpRequest:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:100]!r}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(f"malformed header line: {line[:100]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    target = urlsplit(parts[1])
    return HttpRequest(parts[0], target.path, parse_qs(target.query), headers)


@dataclass(frozen=True)
class ServerOptions:
    address: str
    port: int
    limits: ConnectionLimits = DEFAULT_LIMITS
    # Set: HTTPS only.
    tls: ssl.SSLContext | None = None


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for a PEM certificate (chain) and key; OSError or ssl.SSLError when they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class StreamServer:
    def __init__(self, options: ServerOptions, tokens: TokenCache[StreamRequest], sessions: SessionRunner) -> None:
        self._address = options.address
        self._port = options.port
        self._limits = options.limits
        self._tls = options.tls
        self._tokens = tokens
        self._sessions = sessions
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self._address, self._port, limit=MAX_REQUEST_HEAD, ssl=self._tls,
            ssl_handshake_timeout=REQUEST_HEAD_TIMEOUT if self._tls else None,
        )  # fmt: skip
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening", extra={"fields": {"url": self.base_url}})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        host = self._address if ipaddress.ip_address(self._address).version == 4 else f"[{self._address}]"
        return f"{'https' if self._tls else 'http'}://{host}:{self._port}"

    def url(self, request: StreamRequest) -> str:
        """A one-time URL for `request`."""
        kind = next(kind for kind, request_type in _REQUEST_TYPES.items() if isinstance(request, request_type))
        return f"{self.base_url}/{kind}/{self._tokens.insert(request)}"

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        idle = IdleWatch(self._limits.idle_timeout, writer.transport.abort)
        watching = asyncio.create_task(idle.run())
        try:
            await self._serve(reader, writer, idle)
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            watching.cancel()
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: IdleWatch) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_HEAD_TIMEOUT)
            http = parse_request_head(head)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return
        except (asyncio.LimitOverrunError, BadRequest) as error:
            await _respond(writer, 400, "Bad Request", f"{error}\n")
            return
        kind, _, token = http.path.strip("/").partition("/")
        request = self._tokens.consume(token) if kind in _REQUEST_TYPES and http.method in ("GET", "POST") else None
        if request is None or not isinstance(request, _REQUEST_TYPES[kind]):
            await _respond(writer, 404, "Not Found", "404 page not found\n")
            return
        upgrade = http.header("upgrade").lower()
        if "upgrade" not in [item.lower() for item in http.header_tokens("connection")] or not upgrade:
            await _respond(writer, 400, "Bad Request", "unable to upgrade: missing upgrade headers in request\n")
            return
        if upgrade not in ("websocket", "spdy/3.1"):
            await _respond(writer, 400, "Bad Request", f"unable to upgrade: unsupported protocol {upgrade!r}\n")
            return
        log.info("streaming session", extra={"fields": {"kind": kind, "upgrade": upgrade}})
        connection = _Connection(reader, writer, idle)
        with telemetry.stream_session(kind):
            if isinstance(request, api_pb2.PortForwardRequest):
                await self._serve_port_forward(http, request, connection)
            else:
                await self._serve_command(http, request, connection)

    def _websocket(self, connection: _Connection, subprotocol: str) -> WebSocket:
        max_message = self._limits.websocket_max_message_bytes
        return WebSocket(connection.reader, connection.writer, subprotocol, max_message, connection.idle)

    async def _serve_command(self, http: HttpRequest, request: CommandRequest, connection: _Connection) -> None:
        reader, writer = connection.reader, connection.writer
        options = StreamOptions(request.stdin, request.stdout, request.stderr and not request.tty, request.tty)
        streams: CommandStreams | None
        if http.header("upgrade").lower() == "websocket":
            protocol = await _accept_websocket(http, writer, tuple(remotecommand.WEBSOCKET_PROTOCOLS))
            if protocol is None:
                return
            websocket = self._websocket(connection, protocol)
            streams = remotecommand.WebSocketCommandStreams(websocket, options)
            await streams.finish(await self._sessions.run_command(request, streams))
            return
        protocol = await _accept_spdy(http, writer, remotecommand.SPDY_PROTOCOLS)
        if protocol is None:
            return
        session = SpdySession(TcpByteStream(reader, writer, connection.idle), self._limits)
        serving = asyncio.create_task(session.serve())
        try:
            streams = await remotecommand.accept_spdy_command_streams(session, serving, options, protocol)
            if streams is not None:
                await streams.finish(await self._sessions.run_command(request, streams))
        finally:
            serving.cancel()

    async def _serve_port_forward(
        self, http: HttpRequest, request: api_pb2.PortForwardRequest, connection: _Connection
    ) -> None:
        reader, writer = connection.reader, connection.writer
        try:
            pod, connect = self._sessions.pod_connector(request)
        except OSError as error:
            await _respond(writer, 404, "Not Found", f"{error}\n")
            return
        transport: ByteStream
        if http.header("upgrade").lower() == "websocket":
            supported = (portforward.TUNNEL_PROTOCOL, *portforward.WEBSOCKET_PROTOCOLS)
            protocol = await _accept_websocket(http, writer, supported)
            if protocol is None:
                return
            websocket = self._websocket(connection, protocol)
            if websocket.subprotocol != portforward.TUNNEL_PROTOCOL:
                ports = list(request.port) or [int(port) for port in http.query.get("port", []) if port.isdigit()]
                channels = ChannelWebSocket(websocket, portforward.WEBSOCKET_PROTOCOLS[websocket.subprotocol])
                await portforward.serve_websocket(channels, ports, pod, connect)
                return
            transport = WebSocketByteStream(websocket)
        else:
            if await _accept_spdy(http, writer, portforward.SPDY_PROTOCOLS) is None:
                return
            transport = TcpByteStream(reader, writer, connection.idle)
        session = SpdySession(transport, self._limits)
        serving = asyncio.create_task(session.serve())
        try:
            await portforward.serve_spdy(session, pod, connect)
            await session.close(serving)
        finally:
            serving.cancel()


def _negotiate(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that we support ("" when it offers none; None: no match)."""
    if not offered:
        return ""
    return next((protocol for protocol in offered if protocol in supported), None)


async def _accept_spdy(http: HttpRequest, writer: asyncio.StreamWriter, supported: tuple[str, ...]) -> str | None:
    """Answer the upgrade to SPDY/3.1; the negotiated stream protocol, or None (refused)."""
    offered = http.header_tokens("x-stream-protocol-version")
    protocol = _negotiate(offered, supported)
    if protocol is None:
        accepted = ", ".join(supported)
        message = f"unable to upgrade: unable to negotiate protocol: client supports {offered}, server {accepted}\n"
        await _respond(writer, 403, "Forbidden", message, {"X-Accepted-Stream-Protocol-Versions": accepted})
        return None
    headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
    if protocol:
        headers["X-Stream-Protocol-Version"] = protocol
    await _respond(writer, 101, "Switching Protocols", "", headers)
    return protocol


async def _accept_websocket(http: HttpRequest, writer: asyncio.StreamWriter, supported: tuple[str, ...]) -> str | None:
    """Answer the upgrade to a WebSocket; the negotiated subprotocol, or None (refused)."""
    key = http.header("sec-websocket-key")
    if http.method != "GET" or not key or http.header("sec-websocket-version") != "13":
        await _respond(writer, 400, "Bad Request", "unable to upgrade: not a WebSocket version 13 handshake\n")
        return None
    offered = http.header_tokens("sec-websocket-protocol")
    protocol = _negotiate(offered, supported)
    if protocol is None:
        message = f"unable to upgrade: requested protocols {offered} are not supported, server accepts {supported}"
        await _respond(writer, 400, "Bad Request", message + "\n")
        return None
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Accept": accept_key(key)}
    if protocol:
        headers["Sec-WebSocket-Protocol"] = protocol
    await _respond(writer, 101, "Switching Protocols", "", headers)
    return protocol


async def _respond(
    writer: asyncio.StreamWriter, status: int, reason: str, body: str, headers: dict[str, str] | None = None
) -> None:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if status != 101:
        length = len(body.encode())
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {length}", "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n" + body).encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()

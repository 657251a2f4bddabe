"""Helpers for the streaming tests (no tests here): the client side of the streaming protocols,
as kubectl and crictl play it, small: an HTTP upgrade, a SPDY/3.1 client and a WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pycri.api import api_pb2
from pycri.stream.spdy import DataFrame, FrameDecoder, FrameEncoder, GoAway, RstStream, SynReply, SynStream
from pycri.stream.websocket import Opcode, encode_frame
from tests.support.pods import RPC_TIMEOUT, SLEEP_FOREVER, Pod, Workloads, container_config

WAIT_SECONDS = 30.0
HTTP_PORT = 8080
CLOSED_PORT = 9


def sleeping_container(work: Workloads, busybox: str) -> str:
    """A running container that sleeps, in a pod of its own: where exec tests run their commands."""
    return work.run(work.pod("streams"), container_config("box", busybox, *SLEEP_FOREVER))


def web_pod(work: Workloads, busybox: str) -> Pod:
    """A pod whose container serves /etc over HTTP on HTTP_PORT (on every address of the pod)."""
    pod = work.pod("web")
    work.run(pod, container_config("httpd", busybox, "httpd", "-f", "-p", str(HTTP_PORT), "-h", "/etc"))
    return pod


def exec_url(work: Workloads, container_id: str, *command: str, **flags: bool) -> str:
    flags = {"stdout": True, "stderr": True, **flags}
    request = api_pb2.ExecRequest(container_id=container_id, cmd=list(command), **flags)
    return work.runtime.Exec(request, timeout=RPC_TIMEOUT).url


def attach_url(work: Workloads, container_id: str, **flags: bool) -> str:
    request = api_pb2.AttachRequest(container_id=container_id, **flags)
    return work.runtime.Attach(request, timeout=RPC_TIMEOUT).url


def port_forward_url(work: Workloads, pod: Pod, *ports: int) -> str:
    request = api_pb2.PortForwardRequest(pod_sandbox_id=pod.id, port=list(ports))
    return work.runtime.PortForward(request, timeout=RPC_TIMEOUT).url


@dataclass
class Upgrade:
    status: int
    headers: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def http_upgrade(url: str, method: str, headers: list[tuple[str, str]]) -> Upgrade:
    """Send one request to a streaming URL and read the answer's head (and body, if it is no upgrade)."""
    target = urlsplit(url)
    reader, writer = await asyncio.open_connection(target.hostname, target.port)
    lines = [f"{method} {target.path}{'?' + target.query if target.query else ''} HTTP/1.1", f"Host: {target.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_SECONDS)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines if line)}
    status = int(status_line.split(" ")[1])
    body = b""
    if status != 101:
        body = await reader.readexactly(int(answer.get("content-length", "0")))
        writer.close()
    return Upgrade(status, answer, body, reader, writer)


async def spdy_upgrade(url: str, *protocols: str) -> Upgrade:
    headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", protocol) for protocol in protocols]
    return await http_upgrade(url, "POST", headers)


@dataclass
class ClientStream:
    data: bytearray = field(default_factory=bytearray)
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # FIN, RST or the connection's end
    reset: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SpdyClient:
    def __init__(self, upgrade: Upgrade) -> None:
        self.protocol = upgrade.headers.get("x-stream-protocol-version", "")
        self._reader, self._writer = upgrade.reader, upgrade.writer
        self._encoder, self._decoder = FrameEncoder(), FrameDecoder()
        self._next_id = 1
        self.streams: dict[int, ClientStream] = {}
        self.goaway = asyncio.Event()
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(65536):
                for frame in self._decoder.feed(data):
                    self._handle(frame)
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.ended.set()
                stream.changed.set()

    def _handle(self, frame: object) -> None:
        match frame:
            case SynReply(stream_id):
                self.streams[stream_id].replied.set()
            case DataFrame(stream_id, data, fin):
                stream = self.streams[stream_id]
                stream.data += data
                if fin:
                    stream.ended.set()
                stream.changed.set()
            case RstStream(stream_id):
                stream = self.streams[stream_id]
                stream.reset = True
                stream.replied.set()
                stream.ended.set()
                stream.changed.set()
            case GoAway():
                self.goaway.set()

    def send(self, frame: Any) -> None:
        self._writer.write(self._encoder.encode(frame))

    async def open(self, **headers: str) -> int:
        """Open a stream and wait for the server's answer; its id."""
        stream_id, self._next_id = self._next_id, self._next_id + 2
        self.streams[stream_id] = ClientStream()
        self.send(SynStream(stream_id, {name.lower(): [value] for name, value in headers.items()}))
        await asyncio.wait_for(self.streams[stream_id].replied.wait(), WAIT_SECONDS)
        return stream_id

    def write(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        self.send(DataFrame(stream_id, data, fin))

    async def read_all(self, stream_id: int) -> bytes:
        await asyncio.wait_for(self.streams[stream_id].ended.wait(), WAIT_SECONDS)
        return bytes(self.streams[stream_id].data)

    async def read_until(self, stream_id: int, wanted: bytes) -> bytes:
        stream = self.streams[stream_id]

        async def arrived() -> None:
            while wanted not in stream.data:
                if stream.ended.is_set():
                    raise AssertionError(f"stream ended without {wanted!r}: {bytes(stream.data)!r}")
                stream.changed.clear()
                await stream.changed.wait()

        await asyncio.wait_for(arrived(), WAIT_SECONDS)
        return bytes(stream.data)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        self._task.cancel()


@dataclass
class CommandResult:
    stdout: bytes
    stderr: bytes
    status: dict[str, Any] | str


async def spdy_command(
    url: str, *, stdin: bytes | None = None, stdout: bool = True, stderr: bool = True, tty: bool = False,
    protocol: str = "v4.channel.k8s.io",
) -> CommandResult:  # fmt: skip
    """Run an exec or attach to its end as the remotecommand client does: streams error, stdin,
    stdout, stderr (resize with a terminal); stdin sent and closed; the status read last."""
    upgrade = await spdy_upgrade(url, protocol)
    assert upgrade.status == 101, upgrade.body
    client = SpdyClient(upgrade)
    try:
        error = await client.open(streamType="error")
        stdin_id = await client.open(streamType="stdin") if stdin is not None else None
        stdout_id = await client.open(streamType="stdout") if stdout else None
        stderr_id = await client.open(streamType="stderr") if stderr and not tty else None
        if tty:
            await client.open(streamType="resize")
        if stdin_id is not None:
            client.write(stdin_id, stdin or b"", fin=True)
        out = await client.read_all(stdout_id) if stdout_id else b""
        err = await client.read_all(stderr_id) if stderr_id else b""
        raw = await client.read_all(error)
        status = json.loads(raw) if protocol.startswith(("v4.", "v5.")) else raw.decode()
        return CommandResult(out, err, status)
    finally:
        await client.close()


def exit_code(status: dict[str, Any]) -> int:
    """The exit code a metav1.Status reports (0 for Success)."""
    if status["status"] == "Success":
        return 0
    assert status["reason"] == "NonZeroExitCode", status
    causes = [cause for cause in status["details"]["causes"] if cause.get("reason") == "ExitCode"]
    return int(causes[0]["message"])


class WebSocketClient:
    """Binary or base64 channel messages, masked as a client must."""

    def __init__(self, upgrade: Upgrade) -> None:
        self.subprotocol = upgrade.headers.get("sec-websocket-protocol", "")
        self._reader, self._writer = upgrade.reader, upgrade.writer
        self._base64 = "base64" in self.subprotocol

    @classmethod
    async def connect(cls, url: str, *protocols: str) -> WebSocketClient:
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
        headers += [("Sec-WebSocket-Key", key)] + [("Sec-WebSocket-Protocol", protocol) for protocol in protocols]
        upgrade = await http_upgrade(url, "GET", headers)
        assert upgrade.status == 101, upgrade.body
        return cls(upgrade)

    def send(self, channel: int, data: bytes) -> None:
        if self._base64:
            payload, opcode = str(channel).encode() + base64.b64encode(data), Opcode.TEXT
        else:
            payload, opcode = bytes([channel]) + data, Opcode.BINARY
        self._writer.write(encode_frame(opcode, payload, mask=os.urandom(4)))

    async def receive(self) -> tuple[int, bytes] | None:
        """The next data message as (channel, data); None once the server closed."""
        while True:
            head = await self._reader.readexactly(2)
            size = head[1] & 0x7F
            if size == 126:
                (size,) = struct.unpack(">H", await self._reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack(">Q", await self._reader.readexactly(8))
            payload = await self._reader.readexactly(size)
            opcode = head[0] & 0x0F
            if opcode == Opcode.CLOSE:
                self._writer.write(encode_frame(Opcode.CLOSE, payload[:2], mask=os.urandom(4)))
                return None
            if opcode in (Opcode.TEXT, Opcode.BINARY) and payload:
                if self._base64:
                    return int(chr(payload[0])), base64.b64decode(payload[1:])
                return payload[0], payload[1:]

    async def read_channels(self) -> dict[int, bytes]:
        """Everything until the server closes, per channel."""
        received: dict[int, bytearray] = {}
        while (message := await asyncio.wait_for(self.receive(), WAIT_SECONDS)) is not None:
            received.setdefault(message[0], bytearray()).extend(message[1])
        return {channel: bytes(data) for channel, data in received.items()}

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

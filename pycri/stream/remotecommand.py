"""Kubernetes' remotecommand protocol (exec and attach), server side, over SPDY or a WebSocket.

Over SPDY the client opens one stream per channel, named by its `streamType` header:
error, stdin, stdout, stderr and (v3 on, with a terminal) resize; the server waits for
the ones the request asked for. Over a WebSocket every binary message starts with its
channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255, by which the
client closes a channel (its stdin). The base64 variants send text messages: the
channel as an ASCII digit, then the data in base64.

The outcome goes on the error channel: from v4 on as a JSON metav1.Status (Success, or
Failure with reason NonZeroExitCode and the exit code as an ExitCode cause), before v4
as plain text and only on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

from pycri.stream.limits import WEBSOCKET_QUEUED_MESSAGES
from pycri.stream.spdy_session import SpdySession, SpdyStream
from pycri.stream.websocket import ChannelWebSocket, WebSocket

log = logging.getLogger(__name__)

SPDY_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
# WebSocket subprotocol -> its channel data is base64 text. "" is a client that asked for none.
WEBSOCKET_PROTOCOLS = {
    "v5.channel.k8s.io": False,
    "v4.channel.k8s.io": False,
    "v4.base64.channel.k8s.io": True,
    "channel.k8s.io": False,
    "base64.channel.k8s.io": True,
    "": False,
}
_JSON_STATUS_PROTOCOLS = {"v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"}
_NO_RESIZE_PROTOCOLS = {"v2.channel.k8s.io", "channel.k8s.io", ""}
STREAM_CREATION_TIMEOUT = 30.0
WEBSOCKET_CHUNK = 32 * 1024
_STDIN, _STDOUT, _STDERR, _ERROR, _RESIZE, _CLOSE = 0, 1, 2, 3, 4, 255


@dataclass(frozen=True)
class StreamOptions:
    """The channels an Exec or Attach request asked for."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


@dataclass(frozen=True)
class Outcome:
    """How a session ended: the command's exit code, or `error` when it could not run at all."""

    exit_code: int = 0
    error: str = ""
    command: tuple[str, ...] = ()


def status_document(outcome: Outcome) -> dict[str, object]:
    """The metav1.Status kubelet writes for this outcome."""
    if outcome.error:
        return {
            "metadata": {},
            "status": "Failure",
            "message": f"Internal error occurred: {outcome.error}",
            "reason": "InternalError",
            "details": {"causes": [{"message": outcome.error}]},
            "code": 500,
        }
    if outcome.exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        f"error executing command [{' '.join(outcome.command)}], exit code {outcome.exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(outcome.exit_code)}]},
    }


def status_payload(outcome: Outcome, protocol: str) -> bytes:
    """What goes on the error channel (b"": nothing)."""
    document = status_document(outcome)
    if protocol in _JSON_STATUS_PROTOCOLS:
        return json.dumps(document, separators=(",", ":")).encode()
    return b"" if document["status"] == "Success" else str(document["message"]).encode()


class ResizeDecoder:
    """Terminal sizes from the resize channel: JSON objects ({"Width":…,"Height":…}) one after another."""

    MAX_PENDING = 4096

    def __init__(self) -> None:
        self._pending = ""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[TerminalSize]:
        self._pending += data.decode(errors="replace")
        sizes = []
        while self._pending.strip():
            text = self._pending.lstrip()
            try:
                value, end = self._json.raw_decode(text)
            except (ValueError, RecursionError):
                if len(text) > self.MAX_PENDING:
                    self._pending = ""  # not JSON, and never will be
                break
            self._pending = text[end:]
            fields = {str(key).lower(): number for key, number in value.items()} if isinstance(value, dict) else {}
            width, height = fields.get("width"), fields.get("height")
            if all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 16 for n in (width, height)):
                sizes.append(TerminalSize(int(width), int(height)))  # type: ignore[arg-type]
        return sizes


class CommandStreams(ABC):
    """The client's side of an exec or attach, whatever the transport."""

    def __init__(self, options: StreamOptions, protocol: str) -> None:
        self.options = options
        self.protocol = protocol
        self.resizes: asyncio.Queue[TerminalSize] = asyncio.Queue()
        # Set when the client has gone away (the connection ended).
        self.client_gone = asyncio.Event()

    @abstractmethod
    async def read_stdin(self) -> bytes:
        """The next bytes of the client's stdin; b"" at its end (or when it sends none)."""

    @abstractmethod
    async def write_stdout(self, data: bytes) -> None: ...

    @abstractmethod
    async def write_stderr(self, data: bytes) -> None: ...

    @abstractmethod
    async def finish(self, outcome: Outcome) -> None:
        """Close the output channels, report the outcome, end the connection."""


class SpdyCommandStreams(CommandStreams):
    def __init__(
        self, session: SpdySession, serving: asyncio.Task[None], streams: dict[str, SpdyStream], options: StreamOptions,
        protocol: str,
    ) -> None:  # fmt: skip
        super().__init__(options, protocol)
        self._session = session
        self._serving = serving
        self._streams = streams
        self.client_gone = session.closed
        resize = streams.get("resize")
        self._resize_reader = asyncio.create_task(self._read_resizes(resize)) if resize else None

    async def _read_resizes(self, stream: SpdyStream) -> None:
        decoder = ResizeDecoder()
        while data := await stream.read():
            for size in decoder.feed(data):
                self.resizes.put_nowait(size)

    async def read_stdin(self) -> bytes:
        stdin = self._streams.get("stdin")
        return await stdin.read() if stdin else b""

    async def write_stdout(self, data: bytes) -> None:
        if stdout := self._streams.get("stdout"):
            await stdout.write(data)

    async def write_stderr(self, data: bytes) -> None:
        if stderr := self._streams.get("stderr"):
            await stderr.write(data)

    async def finish(self, outcome: Outcome) -> None:
        for name in ("stdout", "stderr"):
            if name in self._streams:
                self._streams[name].close()
        if error := self._streams.get("error"):
            await error.write(status_payload(outcome, self.protocol))
            error.close()
        for name in ("stdin", "resize"):
            if name in self._streams:
                self._streams[name].close()
        if self._resize_reader is not None:
            self._resize_reader.cancel()
        await self._session.close(self._serving)


async def accept_spdy_command_streams(
    session: SpdySession, serving: asyncio.Task[None], options: StreamOptions, protocol: str
) -> SpdyCommandStreams | None:
    """Wait for the streams the request asked for; None if the client does not open them in time."""
    wanted = 1 + options.stdin + options.stdout + options.stderr
    if options.tty and protocol not in _NO_RESIZE_PROTOCOLS:
        wanted += 1
    streams: dict[str, SpdyStream] = {}

    async def collect() -> bool:
        while len(streams) < wanted:
            stream = await session.accept()
            if stream is None:
                return False
            stream.reply()
            if stream.stream_type in ("error", "stdin", "stdout", "stderr", "resize"):
                streams[stream.stream_type] = stream
            else:
                log.info("unknown stream type from a streaming client", extra={"fields": {"type": stream.stream_type}})
        return True

    try:
        complete = await asyncio.wait_for(collect(), STREAM_CREATION_TIMEOUT)
    except TimeoutError:
        complete = False
    if not complete:
        log.info("streaming client did not open its streams", extra={"fields": {"opened": sorted(streams)}})
        await session.close(serving)
        return None
    return SpdyCommandStreams(session, serving, streams, options, protocol)


class WebSocketCommandStreams(CommandStreams):
    def __init__(self, websocket: WebSocket, options: StreamOptions) -> None:
        super().__init__(options, websocket.subprotocol)
        self._channels = ChannelWebSocket(websocket, WEBSOCKET_PROTOCOLS[websocket.subprotocol])
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=WEBSOCKET_QUEUED_MESSAGES)
        self._stdin_ended = False
        # kubelet's first message: an empty one on the lowest channel the client will read.
        self._channels.send(_STDOUT if options.stdout else _STDERR if options.stderr else _ERROR, b"")
        self._reader = asyncio.create_task(self._demultiplex())

    async def _demultiplex(self) -> None:
        decoder = ResizeDecoder()
        try:
            while (message := await self._channels.receive()) is not None:
                channel, data = message
                if channel == _STDIN and self.options.stdin and data:
                    await self._stdin.put(data)
                elif channel == _RESIZE:
                    for size in decoder.feed(data):
                        self.resizes.put_nowait(size)
                elif channel == _CLOSE and self.protocol == "v5.channel.k8s.io" and data[:1] == bytes([_STDIN]):
                    await self._end_stdin()
        finally:
            self.client_gone.set()
            with contextlib.suppress(asyncio.QueueFull):
                self._stdin.put_nowait(b"")

    async def _end_stdin(self) -> None:
        if not self._stdin_ended:
            self._stdin_ended = True
            await self._stdin.put(b"")

    async def read_stdin(self) -> bytes:
        if not self.options.stdin or (self._stdin.empty() and self.client_gone.is_set()):
            return b""
        return await self._stdin.get()

    async def write_stdout(self, data: bytes) -> None:
        await self._write(_STDOUT, data)

    async def write_stderr(self, data: bytes) -> None:
        await self._write(_STDERR, data)

    async def _write(self, channel: int, data: bytes) -> None:
        for start in range(0, len(data), WEBSOCKET_CHUNK):
            self._channels.send(channel, data[start : start + WEBSOCKET_CHUNK])
            await self._channels.websocket.drain()

    async def finish(self, outcome: Outcome) -> None:
        if payload := status_payload(outcome, self.protocol):
            self._channels.send(_ERROR, payload)
        await self._channels.websocket.close()
        self._reader.cancel()

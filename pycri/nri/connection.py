"""One NRI connection on the event loop: each end calls the other's service on one channel
and serves its own on the other (framing: mux.py and ttrpc.py). pycri is the runtime end;
the test plugin (tests/support/nri_plugin.py) uses the same class as the plugin end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from pycri.nri import mux, ttrpc
from pycri.nri.pb import ttrpc_pb2

log = logging.getLogger(__name__)

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
_READ_SIZE = 1 << 16

Reply = TypeVar("Reply", bound=Message)
# Serves one call of the other end's: (method, request bytes) -> reply bytes; CallFailed sends its status.
Serve = Callable[[str, bytes], Awaitable[bytes]]


@dataclass(frozen=True)
class Side:
    """Which end of the connection this is: the channel and service it calls, and those it serves."""

    calls_channel: int
    calls_service: str
    serves_channel: int
    serves_service: str


RUNTIME_END = Side(mux.PLUGIN_SERVICE_CHANNEL, PLUGIN_SERVICE, mux.RUNTIME_SERVICE_CHANNEL, RUNTIME_SERVICE)
PLUGIN_END = Side(mux.RUNTIME_SERVICE_CHANNEL, RUNTIME_SERVICE, mux.PLUGIN_SERVICE_CHANNEL, PLUGIN_SERVICE)


class ConnectionClosed(Exception):
    """The connection is gone (or was never usable)."""


class Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        serve: Serve,
        label: str,
        side: Side = RUNTIME_END,
    ) -> None:
        self._side = side
        self._reader = reader
        self._writer = writer
        self._serve = serve
        self.label = label
        self._frames = mux.FrameDecoder()
        self._replies = ttrpc.MessageDecoder()  # the other end's answers to our calls
        self._calls = ttrpc.MessageDecoder()  # the other end's calls to us
        self._stream_ids = ttrpc.StreamIds()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def start(self) -> None:
        self._reading = asyncio.create_task(self._read_loop())

    async def call(self, method: str, request: Message, reply: type[Reply], timeout: float) -> Reply:
        """Call the other end; TimeoutError when it does not answer in time, CallFailed when it refuses."""
        if self.closed.is_set():
            raise ConnectionClosed(f"{self.label}: connection closed")
        stream_id = self._stream_ids.take()
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = answer
        message = ttrpc.request(
            stream_id, self._side.calls_service, method, request.SerializeToString(), timeout_ns=int(timeout * 1e9)
        )
        try:
            self._send(self._side.calls_channel, message)
            payload = await asyncio.wait_for(answer, timeout)
        finally:
            self._pending.pop(stream_id, None)
        parsed = reply()
        try:
            parsed.ParseFromString(payload)
        except DecodeError as exc:
            self.close()
            raise ConnectionClosed(f"{self.label}: undecodable {method} reply: {exc}") from None
        return parsed

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ConnectionClosed(f"{self.label}: connection closed"))
        self._pending.clear()
        self._writer.close()
        for task in (*self._tasks, self._reading):
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    def _send(self, channel: int, message: ttrpc.Message) -> None:
        if self.closed.is_set():
            raise ConnectionClosed(f"{self.label}: connection closed")
        self._writer.write(mux.encode(channel, ttrpc.encode_message(message)))

    async def _read_loop(self) -> None:
        try:
            while data := await self._reader.read(_READ_SIZE):
                for channel, payload in self._frames.feed(data):
                    self._take(channel, payload)
        except (ttrpc.TtrpcError, mux.MuxError) as exc:
            log.warning("NRI peer broke the protocol", extra={"fields": {"peer": self.label, "error": str(exc)}})
        except (ConnectionError, OSError) as exc:
            log.info("NRI connection failed", extra={"fields": {"peer": self.label, "error": str(exc)}})
        finally:
            self.close()

    def _take(self, channel: int, payload: bytes) -> None:
        if channel == self._side.calls_channel:
            for message in self._replies.feed(payload):
                answer = self._pending.get(message.stream_id)
                if message.type != ttrpc.MessageType.RESPONSE or answer is None or answer.done():
                    continue  # an answer nobody waits for any more (it timed out)
                try:
                    answer.set_result(ttrpc.response_payload(message))
                except ttrpc.CallFailed as failed:
                    answer.set_exception(failed)
        elif channel == self._side.serves_channel:
            for message in self._calls.feed(payload):
                if message.type == ttrpc.MessageType.REQUEST:
                    task = asyncio.create_task(self._answer(message.stream_id, ttrpc.parse_request(message)))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        # Frames on any other channel are dropped, as NRI's own multiplexer does.

    async def _answer(self, stream_id: int, request: ttrpc_pb2.Request) -> None:
        try:
            if request.service != self._side.serves_service:
                raise ttrpc.CallFailed(ttrpc.Code.UNIMPLEMENTED, f"service {request.service} is not served here")
            reply = ttrpc.response(stream_id, await self._serve(request.method, request.payload))
        except ttrpc.CallFailed as failed:
            reply = ttrpc.response(stream_id, code=failed.code, text=failed.message)
        except DecodeError as exc:
            reply = ttrpc.response(stream_id, code=ttrpc.Code.INVALID_ARGUMENT, text=str(exc))
        except Exception as exc:  # noqa: BLE001 - the caller gets the error as its call's status
            log.exception("serving an NRI call failed", extra={"fields": {"peer": self.label}})
            reply = ttrpc.response(stream_id, code=ttrpc.Code.INTERNAL, text=str(exc))
        with contextlib.suppress(ConnectionClosed):
            self._send(self._side.serves_channel, reply)

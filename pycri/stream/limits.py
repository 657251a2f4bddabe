"""What one streaming connection may make pycri hold, and how long it may sit idle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    # One WebSocket message, all its fragments together (over it: close code 1009).
    websocket_max_message_bytes: int = 16 << 20
    # SPDY streams open at once on one connection; more are refused (RST_STREAM REFUSED_STREAM).
    spdy_max_streams: int = 128
    # Bytes one SPDY stream holds for a slow reader, and so the largest data frame accepted;
    # at the limit the connection stops reading (backpressure).
    spdy_stream_buffer_bytes: int = 256 << 10
    # Seconds without a byte either way before the connection is dropped.
    idle_timeout: float = 4 * 3600.0


# Client messages a WebSocket session queues for a slow consumer (stdin, a forwarded port) before
# it stops reading the socket: each may be as large as the message cap.
WEBSOCKET_QUEUED_MESSAGES = 2


class IdleWatch:
    """Calls `on_idle` once when nothing moved on a connection for `timeout` seconds;
    the connection's readers and writers call `touch` on every byte that moves."""

    def __init__(self, timeout: float, on_idle: Callable[[], None]) -> None:
        self._timeout = timeout
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()

    def touch(self) -> None:
        self._last = self._loop.time()

    async def run(self) -> None:
        while (remaining := self._last + self._timeout - self._loop.time()) > 0:
            await asyncio.sleep(remaining)
        log.info("streaming connection idle: dropping it", extra={"fields": {"idle_s": self._timeout}})
        self._on_idle()

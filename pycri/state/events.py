"""CRI container events (GetContainerEvents): a fan-out to subscribers that drops one who lags."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from pycri.api import api_pb2

log = logging.getLogger(__name__)

# Events a slow subscriber may fall behind by before it is cut off (kubelet then relists).
SUBSCRIBER_BACKLOG = 1024


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[api_pb2.ContainerEventResponse | None]] = set()

    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: api_pb2.ContainerEventResponse) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("ending the event stream of a subscriber that fell behind")
                self._subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    async def subscribe(self) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        queue: asyncio.Queue[api_pb2.ContainerEventResponse | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

"""Container lifecycle events for GetContainerEvents, and the watch on conmon's exit files
that turns a container's exit into an event as it happens."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pycri.api import api_pb2

log = logging.getLogger(__name__)

# Events a slow subscriber may fall behind by before it is cut off (kubelet then relists).
SUBSCRIBER_BACKLOG = 1024

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEADER = struct.Struct("iIII")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[api_pb2.ContainerEventResponse | None]] = set()

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


class ExitWatch:
    """inotify on the exit dir: conmon writes <dir>/<container id> when a container exits."""

    def __init__(self, exit_dir: Path, on_exit: Callable[[str], None]) -> None:
        self._exit_dir = exit_dir
        self._on_exit = on_exit
        self._fd = -1

    def start(self) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(fd, os.fsencode(self._exit_dir), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch {self._exit_dir} failed")
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _, _, _, length = _EVENT_HEADER.unpack_from(data, offset)
            start = offset + _EVENT_HEADER.size
            name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
            offset = start + length
            if name and not name.startswith("."):  # conmon writes a temp file, then renames it
                self._on_exit(name)

    def stop(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

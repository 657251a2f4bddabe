"""The watch on conmon's exit dir: a container's exit reaches pycri as it happens.

conmon writes <exit dir>/<container id> (a temp file, then a rename) when a container
exits; inotify reports the name and the callback takes it from there.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEADER = struct.Struct("iIII")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


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

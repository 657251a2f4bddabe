"""inotify on one directory: the names of files written (closed after writing) or moved into it.

conmon's exit files and the image store's change marker both arrive this way, so pycri
learns of them when they happen rather than by looking on every call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEADER = struct.Struct("iIII")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class DirWatch:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1

    def open(self) -> int:
        """Start watching; returns the non-blocking descriptor to poll."""
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(fd, os.fsencode(self.directory), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch {self.directory} failed")
        self.fd = fd
        return fd

    def drain(self) -> tuple[list[str], bool]:
        """The names seen since the last drain, and whether the kernel's queue overflowed
        (then some were lost). Never blocks."""
        names: list[str] = []
        overflowed = False
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                _, mask, _, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
                offset = start + length
                overflowed = overflowed or bool(mask & _IN_Q_OVERFLOW)
                if name:
                    names.append(name)
        return names, overflowed

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

"""How a daemon and `pycri images` share one image store.

`pycri images import|rm` holds <root>/images.lock shared while it works. The daemon takes
it exclusively for what must not run beside such a command: recovery and garbage
collection at start (waiting for a command to end), and the sweep after RemoveImage
(skipped while a command works: the next sweep or the next start does it).

The daemon serves image reads from memory. A command that changed the image tables
closes <root>/images.changed after writing it; the daemon's inotify watch on the root
dir queues that event at once, and its next image call drains the watch and reloads
before it answers, so a command's change is seen by every call made after it ended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import struct
from pathlib import Path

LOCK_NAME = "images.lock"
MARKER_NAME = "images.changed"

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEADER = struct.Struct("iIII")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def lock_store(root: Path, exclusive: bool, wait: bool) -> int | None:
    """Take images.lock; returns the fd to pass to unlock_store, or None when `wait` is
    False and another process holds it. Blocks when `wait`: not for the event loop."""
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock_store(fd: int) -> None:
    os.close(fd)  # closing the only descriptor drops the flock


def announce_change(root: Path) -> None:
    """Tell a daemon on this root that the image tables changed (an IN_CLOSE_WRITE on the marker)."""
    fd = os.open(root / MARKER_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.close(fd)


class ChangeWatch:
    """The daemon's side: inotify on the root dir, drained without blocking."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._fd = -1

    def start(self) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(fd, os.fsencode(self._root), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch {self._root} failed")
        self._fd = fd

    def changed(self) -> bool:
        """Whether another process announced a change since the last call (one read(2), no file access)."""
        seen = False
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                _, mask, _, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
                offset = start + length
                seen = seen or name == MARKER_NAME or bool(mask & _IN_Q_OVERFLOW)
        return seen

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

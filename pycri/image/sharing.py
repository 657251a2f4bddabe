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

import fcntl
import os
from pathlib import Path

from pycri.inotify import DirWatch

LOCK_NAME = "images.lock"
MARKER_NAME = "images.changed"


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
        self._watch = DirWatch(root)

    def start(self) -> None:
        self._watch.open()

    def changed(self) -> bool:
        """Whether another process announced a change since the last call (one read(2), no file access)."""
        names, overflowed = self._watch.drain()
        return overflowed or MARKER_NAME in names

    def close(self) -> None:
        self._watch.close()

"""Listening on a unix socket path that may hold a stale socket from an earlier run."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class SocketInUse(RuntimeError):
    """A live server already answers on the socket path."""


def claim_socket_path(path: Path, dir_mode: int = 0o755) -> None:
    """Make `path` free for binding: a stale socket is removed, a live one is refused,
    and anything that is not a socket is left alone."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        log.info("removing stale socket", extra={"fields": {"socket": str(path)}})
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another server is already serving on {path}")


@contextlib.contextmanager
def file_creation_mask(mask: int) -> Iterator[None]:
    """The process umask set to `mask` for the block (it is process-wide: keep the block short)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)

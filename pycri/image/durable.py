"""Durability before a record: what the image store writes is on disk before a rename or a
database row says it is complete, so a power cut never leaves a recorded blob or snapshot
with empty or missing files."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory: the names made, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """syncfs(2) of the filesystem holding `path`: every file and directory written there is
    durable. One call for an unpacked layer, which may hold thousands of files (as containerd
    does after applying a layer), instead of an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs {path}: {os.strerror(error)}")
    finally:
        os.close(fd)

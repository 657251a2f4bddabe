"""A pod's /dev/shm: a tmpfs of its own, shared by the pod's containers."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHM_SIZE_BYTES = 64 * 1024 * 1024
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_shm(path: Path) -> None:
    """Mount a fresh tmpfs (64 MiB, mode 1777, nosuid, nodev, noexec) on a new dir at `path`."""
    path.mkdir(mode=0o700)
    options = f"mode=1777,size={SHM_SIZE_BYTES}".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"shm", os.fsencode(path), b"tmpfs", flags, options) != 0:
        err = ctypes.get_errno()
        path.rmdir()
        raise OSError(err, f"mount tmpfs: {os.strerror(err)}", str(path))


def unmount_shm(path: Path) -> None:
    """Unmount and remove the pod's shm dir; doing it again, or on a missing path, is fine."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (already unmounted); ENOENT: already gone.
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount: {os.strerror(err)}", str(path))
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()

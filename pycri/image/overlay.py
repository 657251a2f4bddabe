"""Overlay mounts of snapshot dirs, through mount(2) and umount2(2) from libc.

The kernel takes at most one page of mount options. When absolute lowerdir
paths do not fit, each lower dir is opened and named by its short
/proc/self/fd/N path instead; overlayfs resolves the paths while mounting,
so the descriptors can be closed right after. (containerd forks a child that
chdirs into the snapshot dir and uses relative paths for the same reason.)
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
# Options longer than a page are cut by the kernel (the byte for NUL counts).
_MAX_OPTIONS = os.sysconf("SC_PAGESIZE") - 1


class MountError(Exception):
    """A mount or unmount the kernel refused; the message names the target and the reason."""


def mount_overlay(
    lowers_top_first: list[Path], target: Path, upper: Path | None = None, work: Path | None = None
) -> None:
    """Mount lowers (topmost first) at target: writable through upper and work, else read-only.

    A read-only mount of a single lower dir is a read-only bind mount, since
    overlayfs wants two lower dirs when it has no upper dir.
    """
    if not lowers_top_first:
        raise MountError(f"overlay at {target}: no lower dirs")
    if (upper is None) != (work is None):
        raise MountError(f"overlay at {target}: upper and work dirs go together")
    if upper is None and len(lowers_top_first) == 1:
        _mount(str(lowers_top_first[0]), target, None, MS_BIND, None)
        try:
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        except MountError:
            unmount(target)
            raise
        return
    tail = f",upperdir={upper},workdir={work}" if upper is not None else ""
    # Layers are shared by many mounts: no index of them belongs in any one upper dir.
    tail += ",index=off"
    options = "lowerdir=" + ":".join(str(lower) for lower in lowers_top_first) + tail
    if len(options.encode()) <= _MAX_OPTIONS:
        _mount("overlay", target, "overlay", 0 if upper is not None else MS_RDONLY, options)
        return
    fds: list[int] = []
    try:
        for lower in lowers_top_first:
            fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        options = "lowerdir=" + ":".join(f"/proc/self/fd/{fd}" for fd in fds) + tail
        if len(options.encode()) > _MAX_OPTIONS:
            raise MountError(f"overlay at {target}: {len(fds)} lower dirs do not fit in the mount options")
        _mount("overlay", target, "overlay", 0 if upper is not None else MS_RDONLY, options)
    finally:
        for fd in fds:
            os.close(fd)


def unmount(target: Path) -> None:
    """Detach whatever is mounted at target; nothing mounted (or no target) is fine."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise MountError(f"unmount {target}: {os.strerror(code)}")


def _mount(source: str | None, target: Path, fstype: str | None, flags: int, options: str | None) -> None:
    result = _libc.mount(
        source.encode() if source is not None else None,
        os.fsencode(target),
        fstype.encode() if fstype is not None else None,
        flags,
        options.encode() if options is not None else None,
    )
    if result != 0:
        code = ctypes.get_errno()
        raise MountError(f"mount {fstype or 'bind'} at {target}: {os.strerror(code)} (options {options})")

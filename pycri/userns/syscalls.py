"""ID-mapped mounts through the new mount API: open_tree(2), mount_setattr(2), move_mount(2).

libc has no wrappers for these on Debian 12, so they are called by number. An ID-mapped
mount is a detached clone of a tree (open_tree with OPEN_TREE_CLONE) given a user
namespace's mappings (mount_setattr with MOUNT_ATTR_IDMAP), then attached somewhere
(move_mount) or handed to overlayfs as a lower layer by its /proc/self/fd path. A file
that is ID X on disk then shows as the host ID that X maps to in that user namespace, so
a process inside it sees X.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

# Both use the generic syscall table for these (they came after the tables were unified).
_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"open_tree": 428, "move_mount": 429, "mount_setattr": 442},
    "aarch64": {"open_tree": 428, "move_mount": 429, "mount_setattr": 442},
}
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class IdmapUnsupported(OSError):
    """This machine's architecture or kernel cannot make ID-mapped mounts."""


def _number(name: str) -> int:
    numbers = _NUMBERS.get(platform.machine())
    if numbers is None:
        raise IdmapUnsupported(f"ID-mapped mounts: no syscall numbers known for {platform.machine()}")
    return numbers[name]


def _call(name: str, what: Path, *args: object) -> int:
    result = int(_libc.syscall(_number(name), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}", str(what))
    return result


def idmapped_clone(source: Path, userns_fd: int, *, recursive: bool = False, readonly: bool = False) -> int:
    """A detached clone of the tree at `source` (with the mounts below it when `recursive`)
    ID-mapped by the user namespace `userns_fd`; returns its fd, which the caller closes."""
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    tree = _call("open_tree", source, _AT_FDCWD, os.fsencode(source), flags)
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0), 0, 0, userns_fd)
        setattr_flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
        _call("mount_setattr", source, tree, b"", setattr_flags, ctypes.byref(attr), ctypes.sizeof(attr))
    except BaseException:
        os.close(tree)
        raise
    return tree


def attach(tree: int, target: Path) -> None:
    """Attach the detached tree `tree` at `target` (an existing file or dir)."""
    _call("move_mount", target, tree, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH)


def mount_idmapped(source: Path, target: Path, userns_fd: int, *, recursive: bool, readonly: bool = False) -> None:
    """An ID-mapped view of `source` mounted at `target`."""
    tree = idmapped_clone(source, userns_fd, recursive=recursive, readonly=readonly)
    try:
        attach(tree, target)
    finally:
        os.close(tree)

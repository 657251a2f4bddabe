"""Layer extraction into overlayfs-native directories.

A layer tar becomes a directory overlayfs can use as a lower layer as it is
(the form containerd's overlay snapshotter keeps): a whiteout entry
``.wh.NAME`` becomes a 0:0 character device NAME and ``.wh..wh..opq`` becomes
the ``trusted.overlay.opaque=y`` xattr on its directory.

Every entry is created relative to a directory file descriptor opened one
component at a time with O_NOFOLLOW, so no name, symlink or hard link in a
layer can make it write outside the target: ``..`` is refused, a leading "/"
only anchors the name at the target, and a path through a symlink is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pycri.config import ImageLimits
from pycri.faults import kill_point
from pycri.image import tarstream
from pycri.image.tarstream import LayerError, LimitExceeded, Member

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL_KINDS = {
    tarstream.CHAR_DEVICE: stat.S_IFCHR,
    tarstream.BLOCK_DEVICE: stat.S_IFBLK,
    tarstream.FIFO: stat.S_IFIFO,
}
# The overlay xattrs change how the kernel merges layers; only whiteouts may set them.
_RESERVED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

# A cancelled unpack notices within this much file data, even inside one big file.
_COPY_SLICE_BYTES = 16 * 1024 * 1024

_Made = TypeVar("_Made")


class UnsafeLayer(LayerError):
    """A layer entry that would write outside the target directory."""


class UnpackCancelled(Exception):
    """The pull that wanted the layer is gone; what was extracted is to be removed."""


class ImageBudget:
    """The file bytes all layers of one image may still unpack to; shared by their threads."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        with self._lock:
            if self._used + size > self._limit:
                raise LimitExceeded(
                    f"image unpacks to more than the {self._limit} bytes of images.limits.image_unpacked_max_bytes"
                )
            self._used += size


@dataclass
class UnpackGuard:
    """What bounds one layer's extraction: the caps, the image's budget and a cancel flag
    the worker checks between entries."""

    limits: ImageLimits = field(default_factory=ImageLimits)
    image_budget: ImageBudget | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise UnpackCancelled("unpack cancelled")


def apply_layer(blob_path: Path, media_type: str, target_dir: Path, guard: UnpackGuard | None = None) -> str:
    """Extract one layer blob into target_dir; return its diff ID (sha256 of the uncompressed tar)."""
    guard = guard or UnpackGuard()
    layer_bytes = 0
    with open(blob_path, "rb", buffering=0) as raw:
        compression = tarstream.detect_compression(media_type, raw.read(4), blob_path)
        raw.seek(0)
        with tarstream.TarStream(raw, compression) as stream, _Extractor(target_dir, guard) as extractor:
            for member in tarstream.tar_members(stream, guard.limits):
                guard.check_cancelled()
                if member.type in tarstream.REGULAR:
                    layer_bytes += member.size
                    if layer_bytes > guard.limits.layer_unpacked_max_bytes:
                        raise LimitExceeded(
                            f"layer unpacks to more than the {guard.limits.layer_unpacked_max_bytes} bytes"
                            " of images.limits.layer_unpacked_max_bytes"
                        )
                    if guard.image_budget is not None:
                        guard.image_budget.take(member.size)
                try:
                    extractor.apply(member, stream)
                except OSError as exc:
                    raise LayerError(f"layer entry {member.name!r}: {exc}") from exc
                kill_point("pull_image.layer")
            extractor.finish_directories()
            return stream.finish()


def _split_name(name: str, entry_name: str) -> tuple[str, ...]:
    """A member's name (or link target) as components under the target; ".." and NUL are refused."""
    if "\0" in name:
        raise UnsafeLayer(f"layer entry {entry_name!r}: NUL in {name!r}")
    parts = tuple(part for part in name.split("/") if part and part != ".")
    if ".." in parts:
        raise UnsafeLayer(f"layer entry {entry_name!r}: '..' in {name!r}")
    return parts


class _Extractor:
    """Creates members below one target directory without ever leaving it."""

    def __init__(self, target_dir: Path, guard: UnpackGuard) -> None:
        self._guard = guard
        self._root_fd = os.open(target_dir, _DIR_FLAGS)
        # Open fds of the directories on the path of the last member: tar
        # members come in tree order, so most members reuse them.
        self._chain: list[tuple[str, int]] = []
        # chmod and mtimes of directories wait until their content is written.
        self._dirs: list[tuple[tuple[str, ...], int, int]] = []
        self._set_owners = os.geteuid() == 0
        # What new files get without chown: ours, unless a setgid tree hands them its group.
        root_is_setgid = os.fstat(self._root_fd).st_mode & stat.S_ISGID
        self._default_owner = None if root_is_setgid else (os.geteuid(), os.getegid())
        self._umask = _process_umask()

    def __enter__(self) -> _Extractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _, fd in self._chain:
            os.close(fd)
        self._chain = []
        os.close(self._root_fd)

    def apply(self, member: Member, stream: tarstream.TarStream) -> None:
        parts = _split_name(member.name, member.name)
        if parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member.name)
        elif member.type == tarstream.DIRECTORY:
            self._directory(parts, member)
        elif not parts:
            raise UnsafeLayer(f"layer entry {member.name!r}: only a directory may name the layer root")
        elif member.type in tarstream.REGULAR:
            self._regular(parts, member, stream)
        elif member.type == tarstream.SYMLINK:
            self._symlink(parts, member)
        elif member.type == tarstream.HARDLINK:
            self._hardlink(parts, member)
        elif member.type in _SPECIAL_KINDS:
            self._special(parts, member)
        else:
            log.warning(
                "skipped layer entry of unknown type",
                extra={"fields": {"entry": member.name, "type": member.type.decode("latin-1")}},
            )

    def finish_directories(self) -> None:
        for parts, mode, mtime_ns in self._dirs:
            fd = self._dir_fd(parts, "/".join(parts))
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))

    def _dir_fd(self, parts: tuple[str, ...], entry_name: str) -> int:
        """The fd of directory parts, creating missing directories, reusing the open chain."""
        common = 0
        for (opened, _), part in zip(self._chain, parts, strict=False):
            if opened != part:
                break
            common += 1
        for _, fd in self._chain[common:]:
            os.close(fd)
        del self._chain[common:]
        fd = self._chain[-1][1] if self._chain else self._root_fd
        for part in parts[common:]:
            fd = _open_dir(fd, part, entry_name, create=True)
            self._chain.append((part, fd))
        return fd

    def _whiteout(self, parts: tuple[str, ...], entry_name: str) -> None:
        parent = self._dir_fd(parts[:-1], entry_name)
        if parts[-1] == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        hidden = parts[-1].removeprefix(WHITEOUT_PREFIX)
        if hidden.startswith(WHITEOUT_PREFIX):
            return  # AUFS bookkeeping such as .wh..wh.plnk: nothing overlayfs needs
        if hidden in ("", ".", ".."):
            raise UnsafeLayer(f"layer entry {entry_name!r}: whiteout of an invalid name")
        try:
            self._create(parent, parts[:-1] + (hidden,), lambda: os.mknod(hidden, stat.S_IFCHR, 0, dir_fd=parent))
        except PermissionError as exc:
            raise LayerError(f"layer entry {entry_name!r}: cannot create the whiteout device: {exc}") from exc

    def _directory(self, parts: tuple[str, ...], member: Member) -> None:
        if parts:
            parent = self._dir_fd(parts[:-1], member.name)
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(parts[-1], dir_fd=parent).st_mode):
                    self._remove(parent, parts)
                    os.mkdir(parts[-1], 0o700, dir_fd=parent)
        fd = self._dir_fd(parts, member.name)
        if self._set_owners:
            os.fchown(fd, member.uid, member.gid)
        _set_xattrs(fd, member)
        self._dirs.append((parts, member.mode, member.mtime_ns))

    def _regular(self, parts: tuple[str, ...], member: Member, stream: tarstream.TarStream) -> None:
        parent = self._dir_fd(parts[:-1], member.name)
        name = parts[-1]
        # Most files need neither chown nor chmod: each saved syscall counts here.
        mode_at_create = not member.mode & (0o7000 | self._umask)
        create_mode = member.mode if mode_at_create else 0o600
        fd = self._create(parent, parts, lambda: os.open(name, _FILE_FLAGS, create_mode, dir_fd=parent))
        try:
            remaining = member.size
            while remaining:
                step = min(remaining, _COPY_SLICE_BYTES)
                stream.copy_to(fd, step, member.name)
                remaining -= step
                self._guard.check_cancelled()
            if self._set_owners and (member.uid, member.gid) != self._default_owner:
                os.fchown(fd, member.uid, member.gid)
            if not mode_at_create:
                # After chown, which clears setuid bits and file capabilities.
                os.fchmod(fd, member.mode)
            _set_xattrs(fd, member)
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
        finally:
            os.close(fd)

    def _symlink(self, parts: tuple[str, ...], member: Member) -> None:
        parent = self._dir_fd(parts[:-1], member.name)
        name = parts[-1]
        self._create(parent, parts, lambda: os.symlink(member.linkname, name, dir_fd=parent))
        self._finish_node(parent, name, member, chmod=False)

    def _special(self, parts: tuple[str, ...], member: Member) -> None:
        parent = self._dir_fd(parts[:-1], member.name)
        name = parts[-1]
        kind = _SPECIAL_KINDS[member.type]
        device = os.makedev(member.devmajor, member.devminor)
        try:
            self._create(parent, parts, lambda: os.mknod(name, kind | 0o600, device, dir_fd=parent))
        except PermissionError:
            log.warning("skipped device node: not permitted here", extra={"fields": {"entry": member.name}})
            return
        self._finish_node(parent, name, member, chmod=True)

    def _finish_node(self, parent: int, name: str, member: Member, chmod: bool) -> None:
        """Owner, mode, xattrs and mtime of a symlink or special file, by name."""
        if self._set_owners:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if chmod:
            # The name is a node this thread just made, not a symlink.
            os.chmod(name, member.mode, dir_fd=parent)
        if member.xattrs:
            _set_xattrs(f"/proc/self/fd/{parent}/{name}", member)
        os.utime(name, ns=(member.mtime_ns, member.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, parts: tuple[str, ...], member: Member) -> None:
        target = _split_name(member.linkname, member.name)
        if not target:
            raise UnsafeLayer(f"layer entry {member.name!r}: hard link to the layer root")
        if target == parts:
            return
        source_parent = self._root_fd
        try:
            for part in target[:-1]:
                next_fd = _open_dir(source_parent, part, member.name, create=False)
                if source_parent != self._root_fd:
                    os.close(source_parent)
                source_parent = next_fd
            parent = self._dir_fd(parts[:-1], member.name)
            self._create(
                parent,
                parts,
                lambda: os.link(
                    target[-1], parts[-1], src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False
                ),
            )
        except FileNotFoundError as exc:
            raise LayerError(f"layer entry {member.name!r}: hard link target is not in this layer") from exc
        finally:
            if source_parent != self._root_fd:
                os.close(source_parent)

    def _create(self, parent: int, parts: tuple[str, ...], make: Callable[[], _Made]) -> _Made:
        """Run make(); if the name exists, a later member replaces it: remove it and retry."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent, parts)
            return make()

    def _remove(self, parent: int, parts: tuple[str, ...]) -> None:
        name = parts[-1]
        if stat.S_ISDIR(os.lstat(name, dir_fd=parent).st_mode):
            shutil.rmtree(name, dir_fd=parent)
            depth = len(parts)
            self._dirs = [entry for entry in self._dirs if entry[0][:depth] != parts]
        else:
            os.unlink(name, dir_fd=parent)


def _process_umask() -> int:
    """The umask, read without setting it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o777


def _open_dir(parent: int, name: str, entry_name: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise LayerError(f"layer entry {entry_name!r}: hard link target is not in this layer") from None
        os.mkdir(name, 0o755, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
            raise UnsafeLayer(f"layer entry {entry_name!r}: path goes through the symlink {name!r}") from None
        raise LayerError(f"layer entry {entry_name!r}: {name!r} on its path is not a directory") from None


def _set_xattrs(target: int | str, member: Member) -> None:
    """Apply a member's xattrs to an fd or to a path that is not followed."""
    for key, value in member.xattrs.items():
        if key.startswith(_RESERVED_XATTR_PREFIXES):
            log.warning("ignored overlay xattr in layer", extra={"fields": {"entry": member.name, "xattr": key}})
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            # Filesystems without xattrs, and namespaces this process may not write.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EPERM):
                raise
            log.warning(
                "xattr not applied",
                extra={"fields": {"entry": member.name, "xattr": key, "error": exc.strerror}},
            )

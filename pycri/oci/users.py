"""Users and groups of an image: /etc/passwd and /etc/group read inside a rootfs, never outside it.

Paths are resolved one component at a time through directory file descriptors, with symlinks
interpreted as if the rootfs were "/": an absolute link restarts at the rootfs, ".." stops at it.
A hostile image cannot make pycri read the host's /etc/passwd with a symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pycri.oci.spec_errors import SpecError

MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
_MAX_SYMLINKS = 40
_MAX_DB_BYTES = 16 * 1024 * 1024


class ResolvedUser(NamedTuple):
    uid: int
    gid: int
    additional_gids: tuple[int, ...]  # groups of /etc/group listing the user by name, in file order


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _open_path_in_rootfs(rootfs: Path, path: str) -> int:
    """An O_PATH descriptor of `path` inside `rootfs`; raises OSError (ENOENT, ELOOP, ENOTDIR...)."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    root_fd = os.open(rootfs, flags | os.O_DIRECTORY)
    chain = [root_fd]  # descriptors from the rootfs down to the current component, so ".." can step back
    pending = list(reversed(path.split("/")))
    links_followed = 0
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(chain) > 1:
                    os.close(chain.pop())
                continue
            fd = os.open(name, flags, dir_fd=chain[-1])
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                chain.append(fd)
                continue
            os.close(fd)
            links_followed += 1
            if links_followed > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(name, dir_fd=chain[-1])
            if target.startswith("/"):
                while len(chain) > 1:
                    os.close(chain.pop())
            pending.extend(reversed(target.split("/")))
        return chain.pop()
    finally:
        for fd in chain:
            os.close(fd)


def stat_in_rootfs(rootfs: Path, path: str) -> os.stat_result | None:
    """Stat of `path` resolved inside `rootfs`, or None when it does not exist there."""
    try:
        fd = _open_path_in_rootfs(rootfs, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def read_rootfs_file(rootfs: Path, path: str) -> str | None:
    """Text of a regular file inside `rootfs`, or None when it is absent or not a regular file."""
    try:
        path_fd = _open_path_in_rootfs(rootfs, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(path_fd).st_mode):
            return None
        # Reopening through /proc turns the O_PATH descriptor into a readable one without a new lookup.
        with open(f"/proc/self/fd/{path_fd}", "rb") as file:
            return file.read(_MAX_DB_BYTES).decode("utf-8", errors="replace")
    finally:
        os.close(path_fd)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone accepts "²" and other digits int() refuses


def _parse_id(text: str) -> int | None:
    if not _is_number(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if line.startswith("#") or len(fields) < 4:
            continue
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if fields[0] and uid is not None and gid is not None:
            entries.append(PasswdEntry(fields[0], uid, gid))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if line.startswith("#") or len(fields) < 3:
            continue
        gid = _parse_id(fields[2])
        members = tuple(member for member in fields[3].split(",") if member) if len(fields) > 3 else ()
        if fields[0] and gid is not None:
            entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve_user(rootfs: Path, user_spec: str) -> ResolvedUser:
    """Resolve an image-style user ("", "1000", "1000:1000", "name", "name:group", "uid:groupname").

    An empty user is root. A numeric user need not exist in /etc/passwd (its group is then 0);
    a named user or group must exist. Raises SpecError naming what could not be found.
    """
    user_part, _, group_part = user_spec.partition(":")
    try:
        passwd = parse_passwd(read_rootfs_file(rootfs, "/etc/passwd") or "")
        groups = parse_group(read_rootfs_file(rootfs, "/etc/group") or "")
    except OSError as err:
        raise SpecError(f"cannot read the image's users and groups: {err}") from err

    entry: PasswdEntry | None
    if user_part == "" or _is_number(user_part):
        uid = _parse_id(user_part or "0")
        if uid is None:
            raise SpecError(f"user id {user_part} is out of range")
        entry = next((candidate for candidate in passwd if candidate.uid == uid), None)
    else:
        entry = next((candidate for candidate in passwd if candidate.name == user_part), None)
        if entry is None:
            raise SpecError(f"user {user_part!r} is not in the image's /etc/passwd")
        uid = entry.uid

    if group_part == "":
        gid = entry.gid if entry else 0
    elif _is_number(group_part):
        parsed_gid = _parse_id(group_part)
        if parsed_gid is None:
            raise SpecError(f"group id {group_part} is out of range")
        gid = parsed_gid
    else:
        group = next((candidate for candidate in groups if candidate.name == group_part), None)
        if group is None:
            raise SpecError(f"group {group_part!r} is not in the image's /etc/group")
        gid = group.gid

    additional: tuple[int, ...] = ()
    if entry is not None:
        additional = tuple(group.gid for group in groups if entry.name in group.members)
    return ResolvedUser(uid, gid, additional)

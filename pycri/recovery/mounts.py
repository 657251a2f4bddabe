"""Mount points from /proc/self/mountinfo, and whose they are under pycri's root and state dirs.

mountinfo names each mount point with space, tab, newline and backslash escaped as three
octal digits (\\040, \\011, \\012, \\134) and every other byte as it is, so a line is parsed as
bytes and a point decoded the way Python decodes any file name (os.fsdecode).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPED_BYTE = re.compile(rb"\\([0-7]{3})")
# Dirs named by the id of the row that owns them: <root or state>/<dir>/<id>/...
OWNER_DIRS = {"containers": "container", "sandboxes": "sandbox"}


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs_type: str


@dataclass(frozen=True)
class Owner:
    """The row a host object belongs to: a "container", a "sandbox", or either one (a "runtime"
    id: runc containers, conmon, exit files and cgroups name pause processes by sandbox id)."""

    kind: str
    id: str


def unescape_mountinfo(field: bytes) -> str:
    def byte(match: re.Match[bytes]) -> bytes:
        value = int(match.group(1), 8)
        return bytes([value]) if value < 256 else match.group(0)

    return os.fsdecode(_ESCAPED_BYTE.sub(byte, field))


def parse_mountinfo(data: bytes) -> list[MountEntry]:
    """The mounts of a mountinfo text, in its order (a mount listed later sits on top)."""
    entries = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if b"-" not in fields:
            continue
        separator = fields.index(b"-")
        if separator < 6 or len(fields) < separator + 3:
            continue
        entries.append(MountEntry(unescape_mountinfo(fields[4]), os.fsdecode(fields[separator + 1])))
    return entries


def read_mountinfo() -> list[MountEntry]:
    return parse_mountinfo(MOUNTINFO.read_bytes())


def is_within(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> bool:
    """Whether `path` is `base` or below it, by their normalised names (no file system access)."""
    return PurePosixPath(os.path.normpath(path)).is_relative_to(os.path.normpath(base))


def path_owner(path: str, bases: tuple[str, ...]) -> Owner | None:
    """The owner of a path <base>/containers/<id>/... or <base>/sandboxes/<id>/... for one of
    `bases` (pycri's root and state dirs); None for anything else, the bases themselves included."""
    for base in sorted(bases, key=lambda b: len(PurePosixPath(b).parts), reverse=True):
        if not is_within(path, base):
            continue
        parts = PurePosixPath(os.path.normpath(path)).relative_to(os.path.normpath(base)).parts
        if len(parts) >= 2 and parts[0] in OWNER_DIRS:
            return Owner(OWNER_DIRS[parts[0]], parts[1])
        return None
    return None


def deepest_first(entries: list[MountEntry]) -> list[MountEntry]:
    """The order to unmount in: children before parents, of stacked mounts the top one first."""
    on_top_first = list(reversed(entries))
    return sorted(on_top_first, key=lambda entry: len(PurePosixPath(entry.mount_point).parts), reverse=True)


def mounts_at_or_below(path: Path) -> list[str]:
    """Mount points at `path` or inside it (read now, as `path` resolves now)."""
    real = os.path.realpath(path)
    return [entry.mount_point for entry in read_mountinfo() if is_within(entry.mount_point, real)]

"""The container checkpoint archive, laid out as CRI-O and containerd write it (and checkpointctl
reads it): an uncompressed tar holding

    checkpoint/        CRIU's image files
    config.dump        JSON: id, name, rootfsImage, rootfsImageRef, rootfsImageName, runtime, times
    spec.dump          the container's OCI spec (config.json)
    status.dump        the CRI ContainerStatus as JSON (containerd)
    rootfs-diff.tar    the files the container added or changed in its rootfs
    deleted.files      JSON list of the image's paths the container removed
    bind.mounts        JSON list of the spec's bind mounts: source, destination, file_type, permissions
    container.log      the container's CRI log so far (containerd's name)
    dump.log, stats-dump   CRIU's log and statistics of the dump

Writing works on a staging dir; reading takes members by name, refusing paths outside the
destination, links out of it and anything too large to be metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pycri.errors import InvalidArgument

CHECKPOINT_DIR = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
STATUS_DUMP = "status.dump"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
BIND_MOUNTS = "bind.mounts"
CONTAINER_LOG = "container.log"
DUMP_LOG = "dump.log"
STATS_DUMP = "stats-dump"
ARCHIVE_MEMBERS = (
    CHECKPOINT_DIR, CONFIG_DUMP, SPEC_DUMP, STATUS_DUMP, ROOTFS_DIFF, DELETED_FILES, BIND_MOUNTS,
    CONTAINER_LOG, DUMP_LOG, STATS_DUMP,
)  # fmt: skip
METADATA_MAX_BYTES = 16 * 1024 * 1024
_WHITEOUT_RDEV = 0
_OPAQUE_XATTR = "trusted.overlay.opaque"


class CheckpointArchiveError(InvalidArgument, ValueError):
    """The archive is no container checkpoint pycri can restore; the message says which part."""


@dataclass(frozen=True)
class CheckpointConfig:
    """config.dump: what the checkpointed container was."""

    id: str
    name: str
    rootfs_image: str  # as the user asked for it
    rootfs_image_ref: str  # the image ID
    rootfs_image_name: str
    runtime: str
    created: datetime
    checkpointed: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "rootfsImage": self.rootfs_image,
            "rootfsImageRef": self.rootfs_image_ref,
            "rootfsImageName": self.rootfs_image_name,
            "runtime": self.runtime,
            "createdTime": _rfc3339(self.created),
            "checkpointedTime": _rfc3339(self.checkpointed),
            "restoredTime": "0001-01-01T00:00:00Z",
            "restored": False,
        }

    @classmethod
    def from_json(cls, raw: Any) -> CheckpointConfig:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise CheckpointArchiveError(f"{CONFIG_DUMP}: not a checkpoint config")

        def text(key: str) -> str:
            value = raw.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            id=text("id"),
            name=text("name"),
            rootfs_image=text("rootfsImage"),
            rootfs_image_ref=text("rootfsImageRef"),
            rootfs_image_name=text("rootfsImageName"),
            runtime=text("runtime"),
            created=_parse_time(text("createdTime")),
            checkpointed=_parse_time(text("checkpointedTime")),
        )


@dataclass(frozen=True)
class ArchiveMetadata:
    """What CreateContainer needs from an archive before it restores it."""

    config: CheckpointConfig
    spec: dict[str, Any]
    status: dict[str, Any]
    # bind.mounts: destination -> mode of each bind mount whose source was a file, not a directory
    file_binds: dict[str, int] = field(default_factory=dict)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    """An RFC 3339 time as Go writes it (nanoseconds are cut to microseconds); the epoch if none."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# ---- the container's rootfs changes ----


@dataclass(frozen=True)
class RootfsChanges:
    """The container's writable layer as the archive carries it."""

    changed: tuple[str, ...]  # paths relative to the rootfs, parents before children
    deleted: tuple[str, ...]  # absolute paths in the container


def rootfs_changes(upper: Path, lowers: Iterable[Path], skipped: Iterable[str]) -> RootfsChanges:
    """The files in the overlay upper dir `upper` (whiteouts become deletions; an opaque dir
    deletes what the image's `lowers` have in it), leaving out what lies at or under a mount
    point in `skipped` (absolute container paths): those show the mount, not the rootfs."""
    lower_dirs = list(lowers)
    skip = {PurePosixPath(path) for path in skipped}
    changed: list[str] = []
    deleted: list[str] = []
    for directory, subdirs, files in os.walk(upper):
        relative_dir = PurePosixPath("/", os.path.relpath(directory, upper))
        subdirs.sort()
        for name in [*sorted(files), *subdirs]:
            path = relative_dir / name
            if path in skip or any(parent in skip for parent in path.parents):
                if name in subdirs:
                    subdirs.remove(name)
                continue
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == _WHITEOUT_RDEV:
                deleted.append(str(path))
                continue
            changed.append(str(path.relative_to("/")))
            if stat.S_ISDIR(info.st_mode) and _is_opaque(os.path.join(directory, name)):
                deleted.extend(_hidden_by_opaque(path, os.path.join(directory, name), lower_dirs))
    changed.sort(key=lambda relative: (relative.count("/"), relative))
    return RootfsChanges(tuple(changed), tuple(sorted(set(deleted))))


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _hidden_by_opaque(path: PurePosixPath, upper_dir: str, lowers: list[Path]) -> list[str]:
    kept = set(os.listdir(upper_dir))
    hidden: set[str] = set()
    for lower in lowers:
        try:
            hidden.update(os.listdir(lower / path.relative_to("/")))
        except OSError:
            continue
    return [str(path / name) for name in sorted(hidden - kept)]


def write_rootfs_diff(upper: Path, changes: RootfsChanges, staging: Path) -> None:
    """rootfs-diff.tar (from the upper dir: what the container wrote) and deleted.files."""
    with tarfile.open(staging / ROOTFS_DIFF, "w", format=tarfile.PAX_FORMAT) as archive:
        for relative in changes.changed:
            archive.add(upper / relative, arcname=relative, recursive=False)
    _write_json(staging / DELETED_FILES, list(changes.deleted))


def apply_rootfs_diff(archive_dir: Path, rootfs: Path) -> None:
    """Unpack rootfs-diff.tar over the mounted rootfs and remove deleted.files from it; nothing
    is written outside `rootfs` (a path leading out through a symlink is refused)."""
    root = os.path.realpath(rootfs)
    diff = archive_dir / ROOTFS_DIFF
    if diff.exists():
        try:
            with tarfile.open(diff) as archive:
                archive.extractall(rootfs, members=_cleared_members(archive, root), filter=_rootfs_member)
        except tarfile.TarError as err:
            raise CheckpointArchiveError(f"{ROOTFS_DIFF}: {err}") from None
    deleted_path = archive_dir / DELETED_FILES
    deleted = json.loads(deleted_path.read_text()) if deleted_path.exists() else []
    if not isinstance(deleted, list) or not all(isinstance(path, str) for path in deleted):
        raise CheckpointArchiveError(f"{DELETED_FILES}: not a list of paths")
    for path in deleted:
        final = _in_rootfs(root, path, DELETED_FILES)
        if final is None:
            raise CheckpointArchiveError(f"{DELETED_FILES}: {path!r} is not a plain path in the rootfs")
        _remove(final)


def _in_rootfs(root: str, path: str, member: str) -> str | None:
    """Where `path` (relative to the rootfs, "." and empty components aside) lies below `root`,
    its parent dirs resolved and its last component not: None for the rootfs itself. A ".."
    component, or a parent that leads out of the rootfs, is a CheckpointArchiveError."""
    components = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in components:
        raise CheckpointArchiveError(f"{member}: {path!r} is not a plain path in the rootfs")
    if not components:
        return None
    parent = os.path.realpath(os.path.join(root, *components[:-1]))
    if parent != root and not parent.startswith(root + os.sep):
        raise CheckpointArchiveError(f"{member}: {path!r} leads out of the rootfs")
    return os.path.join(parent, components[-1])


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _cleared_members(archive: tarfile.TarFile, root: str) -> Iterator[tarfile.TarInfo]:
    """The diff's members, each once what the merged rootfs has at its path is out of its way:
    a lower layer's symlink the container replaced is removed, never written through (that
    would land wherever it points), and so is a lower dir the container replaced by a file."""
    for member in archive:
        final = _in_rootfs(root, member.name, ROOTFS_DIFF)
        if final is not None and not (member.isdir() and os.path.isdir(final) and not os.path.islink(final)):
            _remove(final)
        yield member


def _rootfs_member(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """The tar filter's checks (no path or link out of the rootfs) without its mode changes:
    a restored container gets its setuid binaries back as they were."""
    checked = tarfile.tar_filter(member, destination)
    return checked.replace(mode=member.mode & 0o7777, deep=False)


# ---- the archive ----


def write_metadata(staging: Path, config: CheckpointConfig, spec: dict[str, Any], status: dict[str, Any]) -> None:
    _write_json(staging / CONFIG_DUMP, config.to_json())
    _write_json(staging / SPEC_DUMP, spec)
    _write_json(staging / STATUS_DUMP, status)
    binds = [_bind_mount(mount) for mount in spec.get("mounts") or [] if mount.get("type") == "bind"]
    _write_json(staging / BIND_MOUNTS, [entry for entry in binds if entry is not None])


def _bind_mount(mount: dict[str, Any]) -> dict[str, Any] | None:
    try:
        info = os.stat(mount["source"])
    except OSError:
        return None
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
    return {
        "source": mount["source"],
        "destination": mount["destination"],
        "file_type": kind,
        "permissions": stat.S_IMODE(info.st_mode),
    }


def _write_json(path: Path, value: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(value, out, indent=2)


def partial_archive(location: Path, token: str) -> Path:
    """Where the archive for `location` is written before it is renamed into place: beside it,
    hidden, named by `token` so two writers never share one."""
    return location.with_name(f".{location.name}.{token}.partial")


def write_archive(staging: Path, location: Path, partial: Path) -> None:
    """The staging dir's archive members as an uncompressed tar at `location`, replaced whole
    (written to `partial` beside it, then renamed); 0600: it holds every memory page of the processes."""
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in ARCHIVE_MEMBERS:
                if (staging / name).exists():
                    archive.add(staging / name, arcname=name)
        os.rename(partial, location)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def read_metadata(archive_path: Path) -> ArchiveMetadata:
    """config.dump, spec.dump, status.dump and bind.mounts of an archive, each read whole (at most 16 MiB)."""
    found: dict[str, Any] = {}
    try:
        with tarfile.open(archive_path) as archive:
            for member in archive:
                if member.name in (CONFIG_DUMP, SPEC_DUMP, STATUS_DUMP, BIND_MOUNTS):
                    found[member.name] = _member_json(archive, member)
    except (tarfile.TarError, OSError) as err:
        raise CheckpointArchiveError(f"{archive_path}: not a readable tar: {err}") from None
    missing = [name for name in (CONFIG_DUMP, SPEC_DUMP) if name not in found]
    if missing:
        raise CheckpointArchiveError(f"{archive_path}: no {', '.join(missing)}: not a container checkpoint")
    spec = found[SPEC_DUMP]
    if not isinstance(spec, dict):
        raise CheckpointArchiveError(f"{SPEC_DUMP}: not an OCI spec")
    status = found.get(STATUS_DUMP)
    return ArchiveMetadata(
        CheckpointConfig.from_json(found[CONFIG_DUMP]),
        spec,
        status if isinstance(status, dict) else {},
        _file_binds(found.get(BIND_MOUNTS, [])),
    )


def _file_binds(raw: Any) -> dict[str, int]:
    """bind.mounts' file sources by destination, with their permission bits (CRI-O writes Go's
    whole FileMode there, so type bits are dropped)."""
    if not isinstance(raw, list):
        raise CheckpointArchiveError(f"{BIND_MOUNTS}: not a list of bind mounts")
    files: dict[str, int] = {}
    for entry in raw:
        destination = entry.get("destination") if isinstance(entry, dict) else None
        kind = entry.get("file_type") if isinstance(entry, dict) else None
        mode = entry.get("permissions", 0o644) if isinstance(entry, dict) else None
        if not isinstance(destination, str) or kind not in ("file", "directory") or type(mode) is not int or mode < 0:
            raise CheckpointArchiveError(
                f"{BIND_MOUNTS}: {entry!r} is no bind mount (destination, file_type file or directory, permissions)"
            )
        if kind == "file":
            files[destination] = mode & 0o777
    return files


def _member_json(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    if not member.isfile() or member.size > METADATA_MAX_BYTES:
        raise CheckpointArchiveError(f"{member.name}: not a file of at most {METADATA_MAX_BYTES} bytes")
    stream: IO[bytes] | None = archive.extractfile(member)
    assert stream is not None
    try:
        return json.loads(stream.read())
    except ValueError as err:
        raise CheckpointArchiveError(f"{member.name}: not JSON: {err}") from None


def unpack_for_restore(archive_path: Path, destination: Path) -> None:
    """The archive's checkpoint/ images, rootfs diff, deleted.files and log into `destination`
    (which must exist), with the data filter: regular files and dirs only, nothing outside."""
    wanted = (CHECKPOINT_DIR, ROOTFS_DIFF, DELETED_FILES, CONTAINER_LOG)
    try:
        with tarfile.open(archive_path) as archive:
            members = [m for m in archive if m.name.lstrip("/").split("/", 1)[0] in wanted]
            archive.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise CheckpointArchiveError(f"{archive_path}: cannot unpack: {err}") from None
    if not (destination / CHECKPOINT_DIR).is_dir():
        raise CheckpointArchiveError(f"{archive_path}: no {CHECKPOINT_DIR}/ with CRIU's images")

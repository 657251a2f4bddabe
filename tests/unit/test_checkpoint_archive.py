"""The checkpoint archive: metadata and member names as CRI-O and containerd write them, the
rootfs diff taken from an overlay upper dir and put back, and what a hostile archive cannot do."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycri.container.checkpoint_archive import (
    CheckpointArchiveError,
    CheckpointConfig,
    apply_rootfs_diff,
    partial_archive,
    read_metadata,
    rootfs_changes,
    unpack_for_restore,
    write_archive,
    write_metadata,
    write_rootfs_diff,
)

pytestmark = pytest.mark.unit
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root")

CONFIG = CheckpointConfig(
    id="c" * 64,
    name="app_web_prod_uid_0",
    rootfs_image="registry.example/app:1",
    rootfs_image_ref="sha256:" + "a" * 64,
    rootfs_image_name="registry.example/app:1",
    runtime="runc",
    created=datetime(2025, 1, 2, 3, 4, 5, 123456, UTC),
    checkpointed=datetime(2025, 1, 2, 4, 0, 0, tzinfo=UTC),
)
SPEC = {"ociVersion": "1.0.2", "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]}


def staged_archive(tmp_path: Path, **extra: bytes) -> Path:
    staging = tmp_path / "staging"
    (staging / "checkpoint").mkdir(parents=True)
    (staging / "checkpoint" / "pages-1.img").write_bytes(b"\0" * 64)
    write_metadata(staging, CONFIG, SPEC, {"id": CONFIG.id, "state": 1})
    for name, data in extra.items():
        (staging / name.replace("_", ".")).write_bytes(data)
    location = tmp_path / "out.tar"
    write_archive(staging, location, partial_archive(location, "t1"))
    return location


def tar_of(tmp_path: Path, members: dict[str, bytes], name: str = "hostile.tar") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w") as archive:
        for member_name, data in members.items():
            info = tarfile.TarInfo(member_name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_config_dump_has_the_names_checkpointctl_reads() -> None:
    raw = CONFIG.to_json()
    assert set(raw) >= {"id", "name", "rootfsImage", "rootfsImageRef", "rootfsImageName", "runtime"}
    assert raw["createdTime"] == "2025-01-02T03:04:05.123456Z"
    assert CheckpointConfig.from_json(raw) == CONFIG


def test_config_dump_as_go_writes_it_is_read() -> None:
    raw = {"id": "x", "createdTime": "2025-01-02T03:04:05.123456789+01:00", "checkpointedTime": "nonsense"}
    config = CheckpointConfig.from_json(raw)
    assert config.created == datetime(2025, 1, 2, 2, 4, 5, 123456, UTC)
    assert config.checkpointed == datetime.fromtimestamp(0, UTC)
    with pytest.raises(CheckpointArchiveError):
        CheckpointConfig.from_json({"name": "no id"})


def test_archive_round_trip(tmp_path: Path) -> None:
    location = staged_archive(tmp_path, container_log=b"log line\n")
    assert stat.S_IMODE(location.stat().st_mode) == 0o600
    with tarfile.open(location) as archive:
        names = archive.getnames()
    assert {"checkpoint", "checkpoint/pages-1.img", "config.dump", "spec.dump", "status.dump", "bind.mounts"} <= set(
        names
    )
    assert "container.log" in names
    metadata = read_metadata(location)
    assert (metadata.config, metadata.spec, metadata.status["state"]) == (CONFIG, SPEC, 1)
    assert not list(tmp_path.glob(".out.tar.*"))  # the partial file was renamed


def test_bind_mounts_record_file_or_directory(tmp_path: Path) -> None:
    staging = tmp_path / "s"
    staging.mkdir()
    (tmp_path / "file").write_text("x")
    mounts = [
        {"destination": "/etc/hosts", "type": "bind", "source": str(tmp_path / "file")},
        {"destination": "/data", "type": "bind", "source": str(tmp_path)},
        {"destination": "/gone", "type": "bind", "source": str(tmp_path / "gone")},
        {"destination": "/proc", "type": "proc", "source": "proc"},
    ]
    (tmp_path / "file").chmod(0o640)
    write_metadata(staging, CONFIG, {"mounts": mounts}, {})
    binds = json.loads((staging / "bind.mounts").read_text())
    assert [(b["destination"], b["file_type"]) for b in binds] == [("/etc/hosts", "file"), ("/data", "directory")]
    (staging / "checkpoint").mkdir()
    write_archive(staging, tmp_path / "a.tar", partial_archive(tmp_path / "a.tar", "t2"))
    assert read_metadata(tmp_path / "a.tar").file_binds == {"/etc/hosts": 0o640}


def test_bind_mounts_as_cri_o_writes_them_keep_only_permission_bits(tmp_path: Path) -> None:
    # Go's FileMode: ModeDir is bit 31; CRI-O stores the whole mode.
    binds = [
        {"source": "/srv/conf", "destination": "/etc/app.conf", "file_type": "file", "permissions": 0o100644},
        {"source": "/srv/data", "destination": "/data", "file_type": "directory", "permissions": (1 << 31) | 0o755},
    ]
    members = {"config.dump": b'{"id": "x"}', "spec.dump": b"{}", "bind.mounts": json.dumps(binds).encode()}
    assert read_metadata(tar_of(tmp_path, members)).file_binds == {"/etc/app.conf": 0o644}


def test_a_partial_archive_already_there_is_not_overwritten(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    partial = partial_archive(tmp_path / "out.tar", "t3")
    partial.write_text("another writer's")
    with pytest.raises(FileExistsError):
        write_archive(staging, tmp_path / "out.tar", partial)
    assert partial.read_text() == "another writer's" and not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"spec.dump": b"{}"}, "no config.dump"),
        ({"config.dump": b"[]", "spec.dump": b"{}"}, "config.dump: not a checkpoint config"),
        ({"config.dump": b'{"id": "x"}', "spec.dump": b"not json"}, "spec.dump: not JSON"),
        ({"config.dump": b'{"id": "x"}', "spec.dump": b"{}", "bind.mounts": b"{}"}, "bind.mounts: not a list"),
        (
            {"config.dump": b'{"id": "x"}', "spec.dump": b"{}", "bind.mounts": b'[{"destination": "/a"}]'},
            "bind.mounts: .* is no bind mount",
        ),
    ],
)
def test_metadata_that_is_not_a_checkpoint_is_refused(tmp_path: Path, members: dict[str, bytes], message: str) -> None:
    with pytest.raises(CheckpointArchiveError, match=message):
        read_metadata(tar_of(tmp_path, members))


def test_a_file_that_is_no_tar_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(CheckpointArchiveError, match="not a readable tar"):
        read_metadata(tmp_path / "x.tar")


def test_unpack_takes_only_restore_members_inside_the_destination(tmp_path: Path) -> None:
    location = staged_archive(tmp_path, container_log=b"old log\n")
    target = tmp_path / "unpacked"
    target.mkdir()
    unpack_for_restore(location, target)
    assert sorted(p.name for p in target.iterdir()) == ["checkpoint", "container.log"]
    assert (target / "checkpoint" / "pages-1.img").stat().st_size == 64


def test_unpack_refuses_paths_out_of_the_destination(tmp_path: Path) -> None:
    hostile = tar_of(tmp_path, {"checkpoint/core.img": b"x", "checkpoint/../../escape": b"owned"})
    target = tmp_path / "unpacked"
    target.mkdir()
    with pytest.raises(CheckpointArchiveError):
        unpack_for_restore(hostile, target)
    assert not (tmp_path / "escape").exists()


def test_unpack_puts_absolute_members_inside_the_destination(tmp_path: Path) -> None:
    target = tmp_path / "unpacked"
    target.mkdir()
    unpack_for_restore(tar_of(tmp_path, {"/checkpoint/core.img": b"x"}), target)
    assert (target / "checkpoint" / "core.img").read_bytes() == b"x"


def test_unpack_needs_criu_images(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    with pytest.raises(CheckpointArchiveError, match="no checkpoint/"):
        unpack_for_restore(tar_of(tmp_path, {"config.dump": b"{}"}), tmp_path / "t")


def make_upper(base: Path) -> Path:
    upper = base / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "app.conf").write_text("changed")
    (upper / "usr" / "bin").mkdir(parents=True)
    tool = upper / "usr" / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)
    (upper / "usr" / "bin" / "tool-link").symlink_to("tool")
    (upper / "dev" / "shm").mkdir(parents=True)  # a mount point runc made: not the rootfs's
    (upper / "etc" / "hosts").write_text("stub")
    return upper


def test_changes_leave_out_mount_points_and_what_is_under_them(tmp_path: Path) -> None:
    changes = rootfs_changes(make_upper(tmp_path), [], ["/dev", "/etc/hosts", "/proc"])
    assert changes.changed == ("etc", "usr", "etc/app.conf", "usr/bin", "usr/bin/tool", "usr/bin/tool-link")
    assert changes.deleted == ()


@needs_root
def test_whiteouts_and_opaque_dirs_become_deletions(tmp_path: Path) -> None:
    upper = make_upper(tmp_path)
    os.mknod(upper / "etc" / "removed.conf", stat.S_IFCHR | 0o000, 0)
    opaque = upper / "var" / "cache"
    opaque.mkdir(parents=True)
    (opaque / "new").write_text("n")
    os.setxattr(opaque, "trusted.overlay.opaque", b"y")
    lower = tmp_path / "lower"
    (lower / "var" / "cache").mkdir(parents=True)
    for name in ("old-1", "old-2", "new"):
        (lower / "var" / "cache" / name).write_text("o")
    changes = rootfs_changes(upper, [lower], ["/dev", "/etc/hosts"])
    assert changes.deleted == ("/etc/removed.conf", "/var/cache/old-1", "/var/cache/old-2")
    assert "etc/removed.conf" not in changes.changed and "var/cache/new" in changes.changed


def test_diff_round_trip_keeps_modes_links_and_deletes(tmp_path: Path) -> None:
    upper = make_upper(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    changes = rootfs_changes(upper, [], ["/dev", "/etc/hosts"])
    write_rootfs_diff(upper, changes, staging)
    (staging / "deleted.files").write_text(json.dumps(["/etc/old.conf", "/var/lib/gone", "/never/was"]))
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "old.conf").write_text("image's")
    (rootfs / "var" / "lib" / "gone").mkdir(parents=True)
    (rootfs / "var" / "lib" / "gone" / "f").write_text("x")
    apply_rootfs_diff(staging, rootfs)
    assert (rootfs / "etc" / "app.conf").read_text() == "changed"
    assert stat.S_IMODE((rootfs / "usr" / "bin" / "tool").stat().st_mode) == 0o4755
    assert os.readlink(rootfs / "usr" / "bin" / "tool-link") == "tool"
    assert not (rootfs / "etc" / "old.conf").exists() and not (rootfs / "var" / "lib" / "gone").exists()
    assert not (rootfs / "dev").exists() and not (rootfs / "etc" / "hosts").exists()


def test_diff_cannot_write_through_a_symlink_out_of_the_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "etc").symlink_to(outside)
    staging = tmp_path / "staging"
    staging.mkdir()
    tar_of(staging, {"etc/passwd": b"owned"}, name="rootfs-diff.tar")
    with pytest.raises(CheckpointArchiveError, match="rootfs-diff.tar: 'etc/passwd' leads out of the rootfs"):
        apply_rootfs_diff(staging, rootfs)
    assert not (outside / "passwd").exists()


def tar_with(path: Path, *members: tuple[str, bytes | None]) -> None:
    """A tar of regular files and (data None) directories, in the order given."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))


def test_a_file_that_replaced_a_lower_symlink_replaces_it_on_restore(tmp_path: Path) -> None:
    # The merged rootfs still has the image's symlinks where the container put a file or a dir of
    # its own: the restore must replace each one, never write through it.
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "app.conf.default").write_text("image's default\n")
    (rootfs / "etc" / "app.conf").symlink_to("app.conf.default")
    (rootfs / "usr" / "opt-real").mkdir(parents=True)
    (rootfs / "opt").symlink_to("usr/opt-real")
    (rootfs / "srv" / "data").mkdir(parents=True)  # a lower dir the container replaced by a file
    (rootfs / "srv" / "data" / "old").write_text("lower\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    tar_with(
        staging / "rootfs-diff.tar",
        ("etc", None), ("opt", None), ("srv", None),
        ("etc/app.conf", b"the container's own\n"), ("opt/tool", b"tool\n"), ("srv/data", b"now a file\n"),
    )  # fmt: skip
    apply_rootfs_diff(staging, rootfs)
    conf = rootfs / "etc" / "app.conf"
    assert not conf.is_symlink() and conf.read_text() == "the container's own\n"
    assert (rootfs / "etc" / "app.conf.default").read_text() == "image's default\n"
    assert not (rootfs / "opt").is_symlink() and (rootfs / "opt" / "tool").read_text() == "tool\n"
    assert list((rootfs / "usr" / "opt-real").iterdir()) == []
    assert (rootfs / "srv" / "data").read_text() == "now a file\n"


def test_a_member_that_climbs_out_is_refused_before_anything_is_removed(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (tmp_path / "victim").write_text("keep")
    staging = tmp_path / "staging"
    staging.mkdir()
    tar_with(staging / "rootfs-diff.tar", ("../victim", b"owned"))
    with pytest.raises(CheckpointArchiveError, match="not a plain path"):
        apply_rootfs_diff(staging, rootfs)
    assert (tmp_path / "victim").read_text() == "keep"


SEGMENTS = st.sampled_from(["..", ".", "a", "link", "sentinel", ""])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(SEGMENTS, min_size=1, max_size=5).map("/".join), max_size=4))
def test_deleted_files_never_remove_outside_the_rootfs(tmp_path: Path, paths: list[str]) -> None:
    base = tmp_path / "case"
    rootfs = base / "rootfs"
    (rootfs / "a").mkdir(parents=True, exist_ok=True)
    (base / "sentinel").write_text("keep")
    if not (rootfs / "link").is_symlink():
        (rootfs / "link").symlink_to(base)
    staging = base / "staging"
    staging.mkdir(exist_ok=True)
    (staging / "deleted.files").write_text(json.dumps(paths))
    with contextlib.suppress(CheckpointArchiveError, OSError):
        apply_rootfs_diff(staging, rootfs)
    assert (base / "sentinel").read_text() == "keep"
    assert (base / "staging" / "deleted.files").exists()

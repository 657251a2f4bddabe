"""Layer extraction: overlayfs-native output, metadata, compression, diff IDs, and refusal of escapes."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycri.image import tarstream
from pycri.image.unpack import LayerError, UnsafeLayer, apply_layer
from tests.support.oci_images import (
    OCI_LAYER_TYPES,
    Compression,
    Entry,
    RawMember,
    char_device_entry,
    dir_entry,
    file_entry,
    hardlink_entry,
    make_layer,
    opaque_entry,
    symlink_entry,
    whiteout_entry,
)

pytestmark = pytest.mark.unit

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mknod, chown, trusted.* xattrs")
MTIME = 1_600_000_000


class Workspace:
    """A target dir for one layer, next to an outside dir the layer must never touch."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.target = base / "target"
        self.outside = base / "outside"
        self.target.mkdir()
        self.outside.mkdir()
        (self.outside / "victim").write_text("untouched")

    def extract(self, entries: Sequence[Entry | RawMember], compression: Compression = "gzip") -> str:
        layer = make_layer(entries, compression)
        blob = self.base / "blob"
        blob.write_bytes(layer.data)
        diff_id = apply_layer(blob, layer.media_type, self.target)
        assert diff_id == layer.diff_id
        return diff_id

    def assert_outside_untouched(self) -> None:
        assert sorted(os.listdir(self.base)) == sorted(["target", "outside", "blob"])
        assert os.listdir(self.outside) == ["victim"]
        assert (self.outside / "victim").read_text() == "untouched"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def timed(entry: Entry) -> Entry:
    return dataclasses.replace(entry, mtime=MTIME)


def test_extracts_files_dirs_and_modes(ws: Workspace) -> None:
    ws.extract(
        [
            timed(dir_entry("usr", mode=0o755)),
            timed(dir_entry("usr/bin", mode=0o750)),
            timed(file_entry("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755)),
            timed(file_entry("usr/bin/readonly", b"ro", mode=0o444)),
            timed(dir_entry("tmp", mode=0o1777)),
            timed(file_entry("etc/implicit-parent", b"x", mode=0o600)),
        ]
    )
    tool = ws.target / "usr/bin/tool"
    assert tool.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755
    assert stat.S_IMODE((ws.target / "usr/bin/readonly").stat().st_mode) == 0o444
    assert stat.S_IMODE((ws.target / "usr/bin").stat().st_mode) == 0o750
    assert stat.S_IMODE((ws.target / "tmp").stat().st_mode) == 0o1777
    assert (ws.target / "etc").is_dir()
    # Directory mtimes are set after their content was written.
    assert (ws.target / "usr/bin").stat().st_mtime == MTIME
    assert tool.stat().st_mtime == MTIME


@needs_root
def test_sets_ownership_and_keeps_setuid_after_chown(ws: Workspace) -> None:
    ws.extract(
        [
            dir_entry("home", uid=1000, gid=1000),
            file_entry("home/owned", b"x", mode=0o6755, uid=1000, gid=2000),
            Entry("home/link", tarfile.SYMTYPE, linkname="owned", uid=1001, gid=1002),
        ]
    )
    owned = (ws.target / "home/owned").stat()
    assert (owned.st_uid, owned.st_gid) == (1000, 2000)
    assert stat.S_IMODE(owned.st_mode) == 0o6755
    assert (ws.target / "home").stat().st_uid == 1000
    link = (ws.target / "home/link").lstat()
    assert (link.st_uid, link.st_gid) == (1001, 1002)


@needs_root
def test_whiteout_becomes_a_0_0_character_device(ws: Workspace) -> None:
    ws.extract([dir_entry("etc"), whiteout_entry("etc/removed"), whiteout_entry("top")])
    for path in (ws.target / "etc/removed", ws.target / "top"):
        info = path.lstat()
        assert stat.S_ISCHR(info.st_mode)
        assert info.st_rdev == os.makedev(0, 0)
    assert not (ws.target / "etc/.wh.removed").exists()


@needs_root
def test_opaque_marker_becomes_the_overlay_xattr(ws: Workspace) -> None:
    ws.extract([dir_entry("var"), opaque_entry("var"), file_entry("var/new", b"n"), opaque_entry("fresh")])
    assert os.getxattr(ws.target / "var", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(ws.target / "fresh", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(ws.target / "var")) == ["new"]


def test_hardlinks_share_the_inode_and_symlinks_keep_their_target(ws: Workspace) -> None:
    ws.extract(
        [
            file_entry("bin/busybox", b"binary", mode=0o755),
            hardlink_entry("bin/sh", "bin/busybox"),
            hardlink_entry("sbin/init", "/bin/busybox"),
            symlink_entry("bin/ls", "busybox"),
            symlink_entry("etc/mtab", "/proc/self/mounts"),
        ]
    )
    source = (ws.target / "bin/busybox").stat()
    assert (ws.target / "bin/sh").stat().st_ino == source.st_ino
    assert (ws.target / "sbin/init").stat().st_ino == source.st_ino
    assert source.st_nlink == 3
    assert os.readlink(ws.target / "bin/ls") == "busybox"
    assert os.readlink(ws.target / "etc/mtab") == "/proc/self/mounts"


@needs_root
def test_devices_and_fifos(ws: Workspace) -> None:
    ws.extract([char_device_entry("dev/null", 1, 3, mode=0o666), Entry("run/fifo", tarfile.FIFOTYPE, mode=0o620)])
    null = (ws.target / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode)
    assert null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    fifo = (ws.target / "run/fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode)
    assert stat.S_IMODE(fifo.st_mode) == 0o620


def test_user_xattrs_apply_and_overlay_xattrs_from_the_tar_do_not(ws: Workspace) -> None:
    ws.extract(
        [
            file_entry("f", b"x", xattrs={"user.note": "hello"}),
            Entry("d", tarfile.DIRTYPE, xattrs={"trusted.overlay.opaque": "y", "user.d": "1"}),
        ]
    )
    assert os.getxattr(ws.target / "f", "user.note") == b"hello"
    assert os.getxattr(ws.target / "d", "user.d") == b"1"
    assert "trusted.overlay.opaque" not in os.listxattr(ws.target / "d")


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_each_compression_and_its_diff_id(ws: Workspace, compression: Compression) -> None:
    entries = [file_entry(f"data/{n}", os.urandom(3000 + n)) for n in range(50)]
    ws.extract(entries, compression)
    assert (ws.target / "data/7").read_bytes() == entries[7].data


@pytest.mark.parametrize("inflate", [zlib, tarstream._inflate_lib], ids=["zlib", "fastest-available"])
def test_gzip_members_padding_and_corruption(ws: Workspace, monkeypatch: pytest.MonkeyPatch, inflate: object) -> None:
    monkeypatch.setattr(tarstream, "_inflate_lib", inflate)
    tar_bytes = make_layer([file_entry(f"f{n}", os.urandom(70_000)) for n in range(40)], "none").data
    middle = len(tar_bytes) // 2
    # Two gzip members (as pigz and concatenation make) and zero padding after them.
    blob = ws.base / "blob"
    blob.write_bytes(gzip.compress(tar_bytes[:middle]) + gzip.compress(tar_bytes[middle:]) + b"\0" * 1000)
    assert apply_layer(blob, OCI_LAYER_TYPES["gzip"], ws.target) == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    assert len(os.listdir(ws.target)) == 40

    corrupt = bytearray(gzip.compress(tar_bytes))
    corrupt[len(corrupt) // 2] ^= 0x55
    blob.write_bytes(bytes(corrupt))
    with pytest.raises(LayerError):
        apply_layer(blob, OCI_LAYER_TYPES["gzip"], ws.base / "target")


def test_magic_bytes_win_over_a_wrong_media_type(ws: Workspace) -> None:
    layer = make_layer([file_entry("f", b"gz")], "gzip")
    blob = ws.base / "blob"
    blob.write_bytes(layer.data)
    assert apply_layer(blob, OCI_LAYER_TYPES["none"], ws.target) == layer.diff_id
    assert (ws.target / "f").read_bytes() == b"gz"


def test_diff_id_covers_bytes_after_the_end_of_archive(ws: Workspace) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("f")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    tar_bytes = buffer.getvalue() + b"\0" * 10240 + b"trailing garbage"
    blob = ws.base / "blob"
    blob.write_bytes(gzip.compress(tar_bytes))
    diff_id = apply_layer(blob, OCI_LAYER_TYPES["gzip"], ws.target)
    assert diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def test_large_file_spanning_many_chunks(ws: Workspace) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    ws.extract([file_entry("big", data)], "zstd")
    assert (ws.target / "big").read_bytes() == data


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_in_every_tar_format(ws: Workspace, tar_format: int) -> None:
    deep = "/".join(["directory-with-a-long-name"] * 6) + "/file"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        info = tarfile.TarInfo(deep)
        info.size = 4
        info.mtime = MTIME
        archive.addfile(info, io.BytesIO(b"deep"))
        link = tarfile.TarInfo("short")
        link.type = tarfile.SYMTYPE
        link.linkname = deep if tar_format != tarfile.USTAR_FORMAT else "x"
        archive.addfile(link)
    blob = ws.base / "blob"
    blob.write_bytes(buffer.getvalue())
    assert apply_layer(blob, OCI_LAYER_TYPES["none"], ws.target).startswith("sha256:")
    assert (ws.target / deep).read_bytes() == b"deep"
    assert (ws.target / deep).stat().st_mtime == MTIME


def test_pax_times_keep_nanoseconds(ws: Workspace) -> None:
    info = tarfile.TarInfo("f")
    info.pax_headers = {"mtime": "1600000000.123456789"}
    ws.extract([(info, None)], "none")
    assert (ws.target / "f").stat().st_mtime_ns == 1_600_000_000_123_456_789


def test_a_later_member_replaces_an_earlier_one(ws: Workspace) -> None:
    ws.extract(
        [
            dir_entry("a"),
            file_entry("a/inner", b"gone"),
            file_entry("a", b"now a file"),
            file_entry("b", b"first"),
            dir_entry("b"),
            file_entry("c", b"old"),
            file_entry("c", b"new"),
            symlink_entry("d", str(ws.outside / "victim")),
            file_entry("d", b"replaces the symlink, not its target"),
        ]
    )
    assert (ws.target / "a").read_bytes() == b"now a file"
    assert (ws.target / "b").is_dir()
    assert (ws.target / "c").read_bytes() == b"new"
    assert (ws.target / "d").read_bytes() == b"replaces the symlink, not its target"
    ws.assert_outside_untouched()


def test_absolute_names_stay_inside(ws: Workspace) -> None:
    ws.extract([file_entry("/etc/hostname", b"inside"), file_entry("./usr/./lib/x", b"x")])
    assert (ws.target / "etc/hostname").read_bytes() == b"inside"
    assert (ws.target / "usr/lib/x").read_bytes() == b"x"


def escape_cases(outside: str) -> dict[str, list[Entry]]:
    return {
        "dotdot": [file_entry("../outside/victim", b"pwned")],
        "dotdot-inside-path": [dir_entry("a"), file_entry("a/../../outside/new", b"pwned")],
        "dotdot-dir": [dir_entry("../outside/newdir")],
        "relative-symlink-then-write": [symlink_entry("a", "../outside"), file_entry("a/new", b"pwned")],
        "deep-relative-symlink": [symlink_entry("a", "../../../.."), file_entry("a/tmp/new", b"pwned")],
        "absolute-symlink-then-write": [symlink_entry("a", outside), file_entry("a/victim", b"pwned")],
        "absolute-symlink-then-dir": [symlink_entry("a", outside), dir_entry("a/newdir")],
        "symlink-then-symlink-through": [symlink_entry("a", outside), symlink_entry("a/new", "/")],
        "symlink-in-middle-of-path": [dir_entry("d"), symlink_entry("d/s", outside), file_entry("d/s/x/new", b"p")],
        "hardlink-dotdot": [hardlink_entry("h", "../outside/victim")],
        "hardlink-through-symlink": [symlink_entry("a", outside), hardlink_entry("h", "a/victim")],
        "hardlink-into-symlinked-dir": [
            file_entry("f", b"x"),
            symlink_entry("a", outside),
            hardlink_entry("a/new", "f"),
        ],
        "whiteout-through-symlink": [symlink_entry("a", outside), whiteout_entry("a/victim")],
        "opaque-through-symlink": [symlink_entry("a", outside), opaque_entry("a")],
        "whiteout-of-dotdot": [Entry("d/.wh..."), file_entry("d/x", b"")],
        "device-through-symlink": [symlink_entry("a", outside), char_device_entry("a/null", 1, 3)],
    }


@pytest.mark.parametrize("case", sorted(escape_cases("/x")))
def test_escapes_are_refused(ws: Workspace, case: str) -> None:
    entries = escape_cases(str(ws.outside))[case]
    with pytest.raises(UnsafeLayer):
        ws.extract(entries)
    ws.assert_outside_untouched()


def test_unsafe_layer_names_the_entry(ws: Workspace) -> None:
    with pytest.raises(UnsafeLayer, match=r"a/victim"):
        ws.extract([symlink_entry("a", str(ws.outside)), file_entry("a/victim", b"pwned")])


def test_hardlink_to_an_absolute_path_resolves_inside(ws: Workspace) -> None:
    with pytest.raises(LayerError, match="not in this layer"):
        ws.extract([hardlink_entry("h", str(ws.outside / "victim"))])
    ws.assert_outside_untouched()


def test_truncated_and_corrupt_layers_are_refused(ws: Workspace) -> None:
    layer = make_layer([file_entry("f", os.urandom(200_000))], "gzip")
    blob = ws.base / "blob"
    blob.write_bytes(layer.data[: len(layer.data) // 2])
    with pytest.raises(LayerError):
        apply_layer(blob, layer.media_type, ws.target)
    tar_bytes = bytearray(make_layer([file_entry("f", b"x")], "none").data)
    tar_bytes[10] ^= 0xFF
    blob.write_bytes(bytes(tar_bytes))
    with pytest.raises(LayerError, match="checksum"):
        apply_layer(blob, OCI_LAYER_TYPES["none"], ws.target)


COMPONENTS = ["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh..", "c"]
LINK_TARGETS = ["..", "/", "a", "../..", "a/b", "/a/../..", "OUTSIDE", "OUTSIDE/victim"]


@st.composite
def hostile_entries(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    name = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map("/".join)
    kind = st.sampled_from(["file", "dir", "symlink", "hardlink"])
    return draw(st.lists(st.tuples(kind, name, st.sampled_from(LINK_TARGETS)), min_size=1, max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_entries())
def test_random_members_never_write_outside(spec: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as base:
        ws = Workspace(Path(base))
        entries = []
        for kind, name, raw_target in spec:
            target = raw_target.replace("OUTSIDE", str(ws.outside))
            if kind == "file":
                entries.append(file_entry(name, b"pwned"))
            elif kind == "dir":
                entries.append(dir_entry(name))
            elif kind == "symlink":
                entries.append(symlink_entry(name, target))
            else:
                entries.append(hardlink_entry(name, target))
        with contextlib.suppress(LayerError):
            ws.extract(entries)
        ws.assert_outside_untouched()
        for directory, _, files in os.walk(ws.target):
            for file_name in files:
                path = Path(directory, file_name)
                if path.is_file() and not path.is_symlink():
                    assert path.stat().st_ino != (ws.outside / "victim").stat().st_ino

"""User and group resolution inside an image rootfs, and paths that must not leave it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.oci.spec_errors import SpecError
from pycri.oci.users import (
    ResolvedUser,
    parse_group,
    parse_passwd,
    read_rootfs_file,
    resolve_user,
    stat_in_rootfs,
)

pytestmark = pytest.mark.unit

PASSWD = """\
# comment line
root:x:0:0:root:/root:/bin/sh
app:x:1000:1001:App:/home/app:/bin/sh
broken line without fields
baduid:x:notanumber:0::/:/bin/sh
other:x:1002:1002::/:/bin/sh
"""
GROUP = """\
root:x:0:
appgroup:x:1001:
wheel:x:10:app,other
audio:x:29:other
video:x:44:app
staff:x:50
"""


def write_rootfs(root: Path, passwd: str = PASSWD, group: str = GROUP) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return write_rootfs(tmp_path / "rootfs")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", ResolvedUser(0, 0, ())),
        ("0", ResolvedUser(0, 0, ())),
        ("root", ResolvedUser(0, 0, ())),
        ("1000", ResolvedUser(1000, 1001, (10, 44))),
        ("app", ResolvedUser(1000, 1001, (10, 44))),
        ("app:0", ResolvedUser(1000, 0, (10, 44))),
        ("app:wheel", ResolvedUser(1000, 10, (10, 44))),
        ("1000:audio", ResolvedUser(1000, 29, (10, 44))),
        ("1000:1000", ResolvedUser(1000, 1000, (10, 44))),
        ("other", ResolvedUser(1002, 1002, (10, 29))),
        ("4242", ResolvedUser(4242, 0, ())),
        ("4242:4343", ResolvedUser(4242, 4343, ())),
        ("app:", ResolvedUser(1000, 1001, (10, 44))),
    ],
)
def test_resolve_user_forms(rootfs: Path, spec: str, expected: ResolvedUser) -> None:
    assert resolve_user(rootfs, spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchuser", "user 'nosuchuser' is not in the image's /etc/passwd"),
        ("baduid", "user 'baduid' is not in the image's /etc/passwd"),
        ("app:nosuchgroup", "group 'nosuchgroup' is not in the image's /etc/group"),
        ("4294967295", "user id 4294967295 is out of range"),
        ("1000:99999999999", "group id 99999999999 is out of range"),
    ],
)
def test_resolve_user_errors(rootfs: Path, spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        resolve_user(rootfs, spec)


def test_missing_databases_allow_numeric_ids_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_user(empty, "123:456") == ResolvedUser(123, 456, ())
    assert resolve_user(empty, "") == ResolvedUser(0, 0, ())
    with pytest.raises(SpecError):
        resolve_user(empty, "root")


def test_a_group_without_member_field_is_parsed() -> None:
    assert [entry.name for entry in parse_group(GROUP)] == ["root", "appgroup", "wheel", "audio", "video", "staff"]
    assert parse_group("staff:x:50")[0].members == ()


def test_parse_passwd_skips_comments_and_malformed_lines() -> None:
    assert [entry.name for entry in parse_passwd(PASSWD)] == ["root", "app", "other"]


def _outside_passwd(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:4242:4242::/:/bin/sh\n")
    return outside


def test_relative_symlink_cannot_climb_out_of_the_rootfs(tmp_path: Path) -> None:
    _outside_passwd(tmp_path)
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").symlink_to("../../../../../../outside/passwd")
    with pytest.raises(SpecError, match="evil"):
        resolve_user(rootfs, "evil")
    # The same link names the rootfs's own /outside/passwd, which is what it means inside the container.
    (rootfs / "outside").mkdir()
    (rootfs / "outside" / "passwd").write_text("inside:x:77:78::/:/bin/sh\n")
    assert resolve_user(rootfs, "inside") == ResolvedUser(77, 78, ())


def test_absolute_symlink_resolves_against_the_rootfs(tmp_path: Path) -> None:
    _outside_passwd(tmp_path)
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").symlink_to(tmp_path / "outside" / "passwd")
    with pytest.raises(SpecError, match="evil"):
        resolve_user(rootfs, "evil")


def test_symlink_to_the_hosts_passwd_does_not_read_it(tmp_path: Path) -> None:
    assert "root:" in Path("/etc/passwd").read_text()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "etc").symlink_to("/")  # /etc inside the rootfs is the rootfs itself: no passwd there
    with pytest.raises(SpecError, match="'root' is not in the image's /etc/passwd"):
        resolve_user(rootfs, "root")


def test_self_referencing_symlink_is_a_spec_error(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SpecError, match="cannot read the image's users and groups"):
        resolve_user(rootfs, "0")


def test_symlinked_directories_inside_the_rootfs_are_followed(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    write_rootfs(rootfs / "real")
    (rootfs / "etc").symlink_to("real/etc")
    assert resolve_user(rootfs, "app").uid == 1000
    (rootfs / "etc").unlink()
    (rootfs / "etc").symlink_to("/real/./etc/../etc")
    assert resolve_user(rootfs, "app").uid == 1000


def test_read_rootfs_file_ignores_what_is_not_a_regular_file(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    os.mkfifo(rootfs / "etc" / "passwd")  # reading a FIFO would block
    (rootfs / "etc" / "group").mkdir()
    assert read_rootfs_file(rootfs, "/etc/passwd") is None
    assert read_rootfs_file(rootfs, "/etc/group") is None
    assert read_rootfs_file(rootfs, "/etc/missing") is None
    assert read_rootfs_file(rootfs, "/etc/passwd/below") is None


def test_stat_in_rootfs(tmp_path: Path) -> None:
    rootfs = write_rootfs(tmp_path / "rootfs")
    (rootfs / "workdir").symlink_to("/etc")
    info = stat_in_rootfs(rootfs, "/workdir")
    assert info is not None and info.st_ino == (rootfs / "etc").stat().st_ino
    assert stat_in_rootfs(rootfs, "/nope") is None
    assert stat_in_rootfs(rootfs, "/../../..") is not None


@given(st.text(max_size=300))
def test_parsers_accept_any_text(text: str) -> None:
    for entry in parse_passwd(text):
        assert 0 <= entry.uid <= 2**32 - 2
    for group in parse_group(text):
        assert 0 <= group.gid <= 2**32 - 2


@pytest.fixture(scope="module")
def module_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rootfs(tmp_path_factory.mktemp("users") / "rootfs")


@given(spec=st.text(max_size=40))
def test_resolve_user_either_resolves_or_raises_spec_error(module_rootfs: Path, spec: str) -> None:
    try:
        resolved = resolve_user(module_rootfs, spec)
    except SpecError:
        return
    assert 0 <= resolved.uid <= 2**32 - 2
    assert 0 <= resolved.gid <= 2**32 - 2


@pytest.mark.parametrize("spec", ["²", "1000:²", "١٢"])
def test_non_ascii_digits_are_names_not_ids(rootfs: Path, spec: str) -> None:
    with pytest.raises(SpecError, match="is not in the image's"):
        resolve_user(rootfs, spec)

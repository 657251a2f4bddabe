"""The orphan sweep's pure parts: mountinfo, whose a path or cgroup is, conmon command lines."""

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.oci.conmon import ConmonCreate, conmon_args
from pycri.oci.runtime import RuntimeHandler
from pycri.recovery.mounts import MountEntry, Owner, deepest_first, parse_mountinfo, path_owner
from pycri.recovery.procs import ConmonArgs, parse_conmon_cmdline
from pycri.recovery.sweep import Owned, cgroup_owner

pytestmark = pytest.mark.unit

ROOT = "/var/lib/pycri"
STATE = "/run/pycri"
ID_A = "a" * 64
ID_B = "0123456789abcdef" * 4

# Text the kernel and argv can carry: anything but NUL, and valid Unicode.
any_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
id_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1).filter(
    lambda text: text not in (".", "..")
)


def kernel_escape(path: bytes) -> bytes:
    """As the kernel's mangle() writes a mount point into mountinfo."""
    return b"".join(b"\\%03o" % byte if byte in b" \t\n\\" else bytes([byte]) for byte in path)


def mountinfo_line(point: bytes, fs_type: bytes = b"overlay", optional: bytes = b"shared:1 ") -> bytes:
    return b"101 27 0:55 / " + kernel_escape(point) + b" rw,relatime " + optional + b"- " + fs_type + b" none rw"


def test_mountinfo_entries_in_order_with_escapes_undone() -> None:
    text = b"\n".join(
        [
            mountinfo_line(b"/run/pycri/sandboxes/x/netns", b"nsfs", b""),
            mountinfo_line(b"/var/lib/pycri/containers/my dir\\with\ttab/rootfs"),
            b"garbage without separator",
            b"",
        ]
    )
    assert parse_mountinfo(text) == [
        MountEntry("/run/pycri/sandboxes/x/netns", "nsfs"),
        MountEntry("/var/lib/pycri/containers/my dir\\with\ttab/rootfs", "overlay"),
    ]


@given(point=st.binary(min_size=1).map(lambda raw: b"/" + raw.replace(b"\0", b"")))
def test_any_mount_point_survives_the_kernels_escaping(point: bytes) -> None:
    assert parse_mountinfo(mountinfo_line(point)) == [MountEntry(os.fsdecode(point), "overlay")]


@given(st.binary())
def test_parse_mountinfo_never_fails_on_garbage(data: bytes) -> None:
    parse_mountinfo(data)


@given(owner_id=id_text, below=st.lists(id_text, max_size=3))
def test_path_owner_is_the_id_dir_under_containers_or_sandboxes(owner_id: str, below: list[str]) -> None:
    tail = "/".join([owner_id, *below])
    assert path_owner(f"{ROOT}/containers/{tail}", (ROOT, STATE)) == Owner("container", owner_id)
    assert path_owner(f"{STATE}/sandboxes/{tail}", (ROOT, STATE)) == Owner("sandbox", owner_id)
    assert path_owner(f"{STATE}/runc/{tail}", (ROOT, STATE)) is None
    assert path_owner(f"/elsewhere/containers/{tail}", (ROOT, STATE)) is None


def test_path_owner_leaves_the_bases_and_the_parent_dirs_alone() -> None:
    for path in (ROOT, STATE, f"{ROOT}/containers", f"{STATE}/sandboxes", f"{ROOT}/snapshots/x/fs", "/var/lib/pycrix"):
        assert path_owner(path, (ROOT, STATE)) is None


def test_path_owner_takes_the_deeper_base_when_one_holds_the_other() -> None:
    assert path_owner(f"{STATE}/root/containers/{ID_A}", (f"{STATE}/root", STATE)) == Owner("container", ID_A)
    assert path_owner(f"{STATE}/root/containers/{ID_A}", (STATE, f"{STATE}/root")) == Owner("container", ID_A)


def test_deepest_mounts_first_and_the_top_of_a_stack_first() -> None:
    entries = [
        MountEntry("/r/containers/a/rootfs", "overlay#1"),
        MountEntry("/r/containers/a/rootfs/image-mounts/0", "overlay"),
        MountEntry("/r/containers/a/rootfs", "overlay#2"),
        MountEntry("/r/sandboxes/b", "tmpfs"),
    ]
    assert deepest_first(entries) == [entries[1], entries[2], entries[0], entries[3]]


def test_cgroup_names_pycri_gives() -> None:
    assert cgroup_owner(f"pod-{ID_A}") == Owner("sandbox", ID_A)
    assert cgroup_owner(f"pycri-pod{ID_A}.slice") == Owner("sandbox", ID_A)
    assert cgroup_owner(ID_B) == Owner("runtime", ID_B)
    assert cgroup_owner(f"conmon-{ID_B}") == Owner("runtime", ID_B)
    assert cgroup_owner(f"pycri-{ID_B}.scope") == Owner("runtime", ID_B)
    for other in ("kubepods", f"pod-{ID_A}x", "cri-containerd-" + ID_A + ".scope", ID_A.upper(), ID_A[:-1], ""):
        assert cgroup_owner(other) is None


def test_owned_by_kind() -> None:
    owned = Owned(sandbox_ids=frozenset({ID_A}), container_ids=frozenset({ID_B}))
    assert owned.owns(Owner("sandbox", ID_A)) and not owned.owns(Owner("sandbox", ID_B))
    assert owned.owns(Owner("container", ID_B)) and not owned.owns(Owner("container", ID_A))
    assert owned.owns(Owner("runtime", ID_A)) and owned.owns(Owner("runtime", ID_B))
    assert not owned.owns(Owner("runtime", "c" * 64))


def cmdline(argv: list[str]) -> bytes:
    return b"".join(os.fsencode(arg) + b"\0" for arg in argv)


@given(
    name=any_text,
    base=any_text.map(lambda text: "/" + text),
    tty=st.booleans(),
    stdin=st.booleans(),
    stdin_once=st.booleans(),
    log_size_max=st.none() | st.integers(min_value=1),
    systemd=st.booleans(),
)
def test_conmon_cmdline_pycri_builds_gives_back_its_id_and_exit_dir(
    name: str, base: str, tty: bool, stdin: bool, stdin_once: bool, log_size_max: int | None, systemd: bool
) -> None:
    # The name and every path come from outside (pod and container names, config): whatever
    # they hold, even text that looks like an option, the id and exit dir read back are pycri's.
    request = ConmonCreate(
        container_id=ID_A,
        name=name,
        bundle=Path(base, "bundle"),
        runtime=RuntimeHandler("runc", Path("/usr/sbin/runc"), Path(base, "runc"), systemd_cgroup=systemd),
        log_path=Path(base, "--cid=x.log"),
        exit_dir=Path(base, "exits"),
        persist_dir=Path(base, "persist"),
        socket_dir=Path(base, "attach"),
        stdin=stdin,
        stdin_once=stdin_once,
        tty=tty,
        log_size_max=log_size_max,
    )
    raw = cmdline(["/usr/bin/conmon", *conmon_args(request)])
    assert parse_conmon_cmdline(raw) == ConmonArgs(container_id=ID_A, exit_dir=str(Path(base, "exits")))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["conmon", "--cid=x", "--exit-dir=/e"], ConmonArgs("x", "/e")),
        (["/usr/local/bin/conmon", "-c", "x", "--name", "--cid", "--exit-dir", "/e"], ConmonArgs("x", "/e")),
        (["conmon", "-t", "-i", "-c", "x", "--exit-dir", "/e", "--", "--cid", "y"], ConmonArgs("x", "/e")),
        (["conmon", "--cid", "x", "--cid", "x", "--exit-dir", "/e"], ConmonArgs("x", "/e")),
        (["conmon", "--cid", "x"], None),  # no exit dir
        (["conmon", "--cid", "x", "--cid", "y", "--exit-dir", "/e"], None),  # which one?
        (["conmon", "-cx", "--exit-dir", "/e"], None),  # a short option cluster pycri never writes
        (["conmon", "--exit-dir", "/e", "--cid"], None),  # the value is missing
        (["conmon", "--cid", "", "--exit-dir", "/e"], None),
        (["crun", "--cid", "x", "--exit-dir", "/e"], None),
        (["/usr/bin/conmon-rs", "--cid", "x", "--exit-dir", "/e"], None),
        ([], None),
    ],
)
def test_conmon_cmdline_cases(argv: list[str], expected: ConmonArgs | None) -> None:
    assert parse_conmon_cmdline(cmdline(argv)) == expected


@given(st.binary())
def test_conmon_cmdline_never_fails_on_garbage(raw: bytes) -> None:
    parse_conmon_cmdline(raw)


@given(st.lists(any_text, max_size=12))
def test_a_command_line_that_is_not_conmons_is_never_taken_for_one(argv: list[str]) -> None:
    assert parse_conmon_cmdline(cmdline(["sleep", *argv])) is None

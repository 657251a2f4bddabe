"""A pod's user namespace, and the network, IPC and UTS namespaces it owns, pinned by bind mounts.

A process in a user namespace can join a network, IPC or UTS namespace only when that
namespace belongs to its user namespace, so a pod in a user namespace gets all of them from
one child (unshare_child.py) that unshares them together, user namespace first. pycri
writes the child's ID maps and bind-mounts each of its namespaces onto the pod's pin files,
then lets it exit: the pins keep the namespaces, as they do for pods without one, and they
survive a restart of pycri. Removal is remove_namespace() of each pin, as for the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pycri.network.netns import remove_namespace
from pycri.userns.mappings import UserNamespaceMappings

log = logging.getLogger(__name__)

CLONE_NEWUSER = 0x10000000
_CLONE_FLAGS = {"user": CLONE_NEWUSER, "net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}
_CHILD = Path(__file__).with_name("unshare_child.py")
CHILD_TIMEOUT_SECONDS = 10.0
_MS_BIND = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


@dataclass(frozen=True)
class PodNamespacePins:
    """Where each namespace of a pod in a user namespace is pinned; None: not made."""

    user: Path
    net: Path | None
    ipc: Path | None
    uts: Path | None

    def made(self) -> list[tuple[str, Path]]:
        kinds = (("user", self.user), ("net", self.net), ("ipc", self.ipc), ("uts", self.uts))
        return [(kind, path) for kind, path in kinds if path is not None]


@contextlib.contextmanager
def _unshared_child(kinds: list[str], hostname: str = "") -> Iterator[int]:
    """A child in new namespaces of `kinds` (its user namespace owning the rest), alive while
    the block runs; yields its pid."""
    flags = 0
    for kind in kinds:
        flags |= _CLONE_FLAGS[kind]
    argv = [sys.executable, "-I", "-S", str(_CHILD), str(flags), *([hostname] if hostname else [])]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        if child.stdout.readline() != b"ready\n":
            child.wait(CHILD_TIMEOUT_SECONDS)
            reason = child.stderr.read().decode(errors="replace").strip() or f"exit status {child.returncode}"
            raise OSError(f"making the pod's namespaces failed: {reason}")
        yield child.pid
    finally:
        child.stdin.close()
        try:
            child.wait(CHILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


def _write_maps(pid: int, mappings: UserNamespaceMappings) -> None:
    Path(f"/proc/{pid}/uid_map").write_text(mappings.uids.proc_line())
    Path(f"/proc/{pid}/gid_map").write_text(mappings.gids.proc_line())


def _pin(source: str, path: Path) -> None:
    """Bind-mount the namespace file `source` onto a new empty file at `path`."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    if _libc.mount(source.encode(), os.fsencode(path), None, _MS_BIND, None) != 0:
        code = ctypes.get_errno()
        path.unlink(missing_ok=True)
        raise OSError(code, f"bind mount of {source}: {os.strerror(code)}", str(path))


def create_pod_namespaces(mappings: UserNamespaceMappings, pins: PodNamespacePins, hostname: str | None) -> None:
    """Make the pod's user namespace with `mappings` and, owned by it, the other namespaces
    `pins` names; pin each. On failure nothing is left at any pin."""
    made = pins.made()
    pinned: list[Path] = []
    try:
        with _unshared_child([kind for kind, _ in made], hostname if pins.uts is not None and hostname else "") as pid:
            _write_maps(pid, mappings)
            for kind, path in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                _pin(f"/proc/{pid}/ns/{kind}", path)
                pinned.append(path)
    except BaseException:
        for path in reversed(pinned):
            remove_namespace(path)
        raise
    log.info(
        "pod user namespace created",
        extra={"fields": {"path": str(pins.user), "uids": mappings.uids.proc_line().strip()}},
    )


@contextlib.contextmanager
def transient_user_namespace(mappings: UserNamespaceMappings) -> Iterator[int]:
    """An fd of a new user namespace with `mappings`, which lives while the fd is open."""
    with _unshared_child(["user"]) as pid:
        _write_maps(pid, mappings)
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)

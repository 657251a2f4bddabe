"""What other local users on the node can reach of pycri's root and state dirs: nothing that holds
secrets (the database keeps container environments), no pod's /dev/shm, and the socket only through
its group. Checked on a node running a pod whose container runs as a non-root user."""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import Node
from tests.support.daemon import mounts_under
from tests.support.pods import SLEEP_FOREVER, Pod, Workloads, container_config

pytestmark = pytest.mark.integration

GROUP_OR_OTHER = 0o077
NOBODY = "65534"

# Paths (relative to the node's base dir, fnmatch patterns: `*` spans `/`) that may be open to group or
# other, each with why. They all lie below a dir only root can search, so other users still cannot reach them.
OPEN_PATHS: dict[str, str] = {
    "root": "search-only (0711) where pods may get user namespaces: their roots walk to root/userns",
    "root/userns": "search-only (0711): the way to the layers of pods with user namespaces",
    "root/userns/containers": "search-only (0711): the way to the layers of pods with user namespaces",
    "root/userns/sandboxes": "search-only (0711): the way to the layers of pods with user namespaces",
    "root/snapshots/*/fs": "an image layer's root dir: overlay shows its mode as the container's",
    "root/snapshots/*/fs/*": "image content: files keep the modes the image gave them",
    "root/containers/*/rootfs": "the container's overlay mount point: its mode is the container's /",
    "root/containers/*/upper": "the container's writable layer: modes the container sees",
    "root/containers/*/upper/*": "the container's writable layer: modes the container sees",
    "root/containers/*/work": "overlay's work dir, made by the kernel",
    "root/sandboxes/*/hostname": "bind-mounted into containers, read there by non-root users",
    "root/sandboxes/*/hosts": "bind-mounted into containers, read there by non-root users",
    "root/sandboxes/*/resolv.conf": "bind-mounted into containers, read there by non-root users",
    "state/sandboxes/*/shm": "the pod's /dev/shm, a 1777 tmpfs shared by the pod's containers",
    "state/sandboxes/*/ipc": "a pinned namespace: nsfs shows its files as 0444",
    "state/sandboxes/*/uts": "a pinned namespace: nsfs shows its files as 0444",
    "state/sandboxes/*/netns": "a pinned namespace: nsfs shows its files as 0444",
    "state/pycri.sock": "the CRI socket: its group may call pycri",
    "state/runc/*": "runc's own state dir for a container (0711; runc makes it)",
    "state/containers/*/conmon.pid": "written by conmon (0644)",
    "state/containers/*/container.pid": "written by runc (0644)",
    "state/containers/*/ctl": "conmon's control FIFO (0640)",
    "state/containers/*/winsz": "conmon's window size FIFO (0640)",
}


@pytest.fixture(scope="module")
def opened_node(node: Node) -> Node:
    """The node with its base dir searchable by all, so only pycri's own modes keep other users out."""
    node.base.chmod(0o755)
    return node


@pytest.fixture
def running_pod(opened_node: Node, work: Workloads, busybox: str) -> Iterator[Pod]:
    pod = work.pod("local-users")
    config = container_config("non-root", busybox, *SLEEP_FOREVER)
    config.envs.add(key="PYCRI_SECRET", value=b"hunter2")
    config.linux.security_context.run_as_user.value = 1234
    container_id = work.run(pod, config)
    assert work.output(container_id, "id", "-u").strip() == "1234"
    assert "local-users" in work.output(container_id, "cat", "/etc/hostname", "/etc/hosts")
    work.output(container_id, "cat", "/etc/resolv.conf")
    yield pod


def allowed(relative: str) -> bool:
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in OPEN_PATHS)


def walk(base: Path, top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path below `top` (itself included) as (path relative to `base`, lstat), not into mounts,
    whose contents are the container's or the pod's and not files of pycri's."""
    mounts = set(mounts_under(top))
    pending = [top]
    while pending:
        path = pending.pop()
        info = path.lstat()
        yield str(path.relative_to(base)), info
        if stat.S_ISDIR(info.st_mode) and path not in mounts:
            pending.extend(path.iterdir())


def open_to_others(base: Path) -> list[str]:
    """Files and dirs below root and state that group or other may read, write or search (symlinks aside)."""
    found = []
    for top in (base / "root", base / "state"):
        for relative, info in walk(base, top):
            mode = stat.S_IMODE(info.st_mode)
            if mode & GROUP_OR_OTHER and not stat.S_ISLNK(info.st_mode) and not allowed(relative):
                found.append(f"{relative} {oct(mode)}")
    return sorted(found)


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", *command],
        capture_output=True,
        text=True,
        check=False,
    )


def test_nothing_below_root_and_state_is_open_to_other_users(
    opened_node: Node, running_pod: Pod, work: Workloads
) -> None:
    base = opened_node.base
    assert open_to_others(base) == []
    handlers = work.runtime.Status(api_pb2.StatusRequest(), timeout=30).runtime_handlers
    user_namespaces = any(handler.features.user_namespaces for handler in handlers)
    assert stat.S_IMODE((base / "root").stat().st_mode) == (0o711 if user_namespaces else 0o700)
    assert stat.S_IMODE((base / "state").stat().st_mode) == 0o700
    for top in (base / "root", base / "root" / "userns"):  # search, never list
        if top.exists():
            assert as_nobody("ls", str(top)).returncode != 0
    for name in ("pycri.db", "pycri.db-wal", "pycri.db-shm"):
        assert stat.S_IMODE((base / "root" / name).stat().st_mode) == 0o600, name
    socket = base / "state" / "pycri.sock"
    assert stat.S_ISSOCK(socket.stat().st_mode) and stat.S_IMODE(socket.stat().st_mode) == 0o660


def test_another_user_can_neither_read_the_database_nor_write_into_a_pod_shm(
    opened_node: Node, running_pod: Pod
) -> None:
    base = opened_node.base
    assert as_nobody("ls", str(base)).returncode == 0, "the test must not rely on the base dir's mode"
    database = base / "root" / "pycri.db"
    assert b"hunter2" in database.read_bytes() + (base / "root" / "pycri.db-wal").read_bytes()
    reading = as_nobody("cat", str(database))
    assert reading.returncode != 0 and os.strerror(errno.EACCES) in reading.stderr
    shm = base / "state" / "sandboxes" / running_pod.id / "shm"
    assert stat.S_IMODE(shm.stat().st_mode) == 0o1777
    writing = as_nobody("touch", str(shm / "planted"))
    assert writing.returncode != 0 and os.strerror(errno.EACCES) in writing.stderr
    assert not (shm / "planted").exists()

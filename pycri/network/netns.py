"""Pod namespaces pinned by bind mounts, with no process holding them.

A namespace lives as long as something references it. Instead of a pause
process, pycri bind-mounts the namespace file of a short-lived thread onto an
empty file (for example /run/pycri/netns/<pod-id>); runc, conmon and the CNI
plugins then join it by that path.

Network, IPC and UTS namespaces are per thread in Linux, so a dedicated
thread can unshare them, pin them and exit without touching the rest of the
process. That thread is never reused (it ends with the namespace it entered),
which is why this module starts plain threads instead of using an executor,
and why it does not fork: forking a process that runs gRPC threads is unsafe.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

if TYPE_CHECKING:  # pyroute2 is imported by the first call that talks netlink (the stats calls)
    from pyroute2 import AsyncIPRoute

log = logging.getLogger(__name__)

NamespaceKind = Literal["net", "ipc", "uts"]

_CLONE_FLAGS: dict[str, int] = {
    "net": 0x40000000,  # CLONE_NEWNET
    "ipc": 0x08000000,  # CLONE_NEWIPC
    "uts": 0x04000000,  # CLONE_NEWUTS
}
_MS_BIND = 4096
_MNT_DETACH = 2
_NETLINK_ROUTE = 0

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

T = TypeVar("T")


class InterfaceStats(NamedTuple):
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def _check(result: int, what: str, path: Path | str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


def run_in_disposable_thread(work: Callable[[], T]) -> T:
    """Run `work` on a fresh OS thread that exits afterwards, and return its result."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=body, name="pycri-namespace", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def enter_namespace(path: Path, kind: NamespaceKind) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, _CLONE_FLAGS[kind]), f"setns {kind}", path)
    finally:
        os.close(fd)


def create_namespace(kind: NamespaceKind, path: Path, *, hostname: str | None = None) -> None:
    """Create a new namespace of `kind` and pin it at `path` (which must not exist).

    For a UTS namespace, `hostname` is set inside it. On failure nothing is left
    at `path`.
    """
    if kind not in _CLONE_FLAGS:
        raise ValueError(f"unsupported namespace kind {kind!r}")
    if hostname is not None and kind != "uts":
        raise ValueError("a hostname can only be set in a uts namespace")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))

    def unshare_and_pin() -> None:
        _check(_libc.unshare(_CLONE_FLAGS[kind]), f"unshare {kind}", path)
        if hostname is not None:
            name = hostname.encode()
            _check(_libc.sethostname(name, len(name)), "sethostname", path)
        source = f"/proc/self/task/{threading.get_native_id()}/ns/{kind}".encode()
        _check(_libc.mount(source, os.fsencode(path), None, _MS_BIND, None), "bind mount", path)

    try:
        run_in_disposable_thread(unshare_and_pin)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    log.info("namespace created", extra={"fields": {"kind": kind, "path": str(path)}})


def create_netns(path: Path) -> None:
    """Create a network namespace pinned at `path`."""
    create_namespace("net", path)


def remove_namespace(path: Path) -> None:
    """Unpin and delete a namespace file; doing it again, or on a missing path, is fine."""
    result = _libc.umount2(os.fsencode(path), _MNT_DETACH)
    if result != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (already unmounted); ENOENT: already gone.
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount: {os.strerror(err)}", str(path))
    path.unlink(missing_ok=True)
    log.info("namespace removed", extra={"fields": {"path": str(path)}})


def is_namespace_pinned(path: Path) -> bool:
    """True when a namespace is bind-mounted at `path` (its file then lives on nsfs)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False


def _netlink_socket_in(netns_path: Path) -> socket.socket:
    def open_socket() -> socket.socket:
        enter_namespace(netns_path, "net")
        # A socket stays bound to the namespace it was created in.
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)

    return run_in_disposable_thread(open_socket)


@asynccontextmanager
async def in_netns(netns_path: Path) -> AsyncIterator[AsyncIPRoute]:
    """An rtnetlink client (pyroute2 AsyncIPRoute) that talks to the kernel inside `netns_path`."""
    from pyroute2 import AsyncIPRoute

    sock = await asyncio.to_thread(_netlink_socket_in, netns_path)
    async with AsyncIPRoute(fileno=sock.detach()) as ipr:
        yield ipr


async def bring_up_loopback(netns_path: Path) -> None:
    """Set `lo` up inside the namespace (the CNI loopback plugin normally does this)."""
    async with in_netns(netns_path) as ipr:
        await ipr.link("set", index=1, state="up")


async def interface_stats(netns_path: Path, ifname: str = "eth0") -> InterfaceStats:
    """Byte and error counters of `ifname` inside the namespace; LookupError if it has no such link."""
    from pyroute2.netlink.exceptions import NetlinkError

    async with in_netns(netns_path) as ipr:
        try:
            links = await ipr.link("get", ifname=ifname)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise LookupError(f"no interface {ifname!r} in {netns_path}") from exc
            raise
    counters = links[0].get("stats64") or links[0].get("stats")
    return InterfaceStats(
        rx_bytes=counters["rx_bytes"],
        rx_errors=counters["rx_errors"],
        tx_bytes=counters["tx_bytes"],
        tx_errors=counters["tx_errors"],
    )

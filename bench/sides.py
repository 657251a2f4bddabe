"""The runtimes a suite run compares, each behind one `Side`: pycri (a `pycri serve` with private
dirs and pod network), an isolated containerd (bench/peers.py), or any CRI endpoint given.

Each side's pods get cgroup parents under a top cgroup of its own, removed with the side. Closing
a side removes what its pods left, warns about anything it still finds on the host, then stops
the daemon it started (by pid) and removes its dirs.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from kubelet import Kubelet
from measure import CallTimes, Memory, wait_for
from peers import BRIDGE, SUBNET, IsolatedContainerd, cgroup_dirs, containerd_version, nat_rules_in, remove_cgroup_tree

from pycri.api import api_pb2, api_pb2_grpc
from tests.integration.test_sandbox_support import Node, host_network_state, running_node
from tests.support.daemon import mounts_under, remove_tree, short_tempdir

MONITOR_NAMES = ("conmon", "containerd-shim-runc-v2")
MONITORS_EXIT_SECONDS = 30.0


@dataclass
class Side:
    key: str  # "pycri" or "peer"
    name: str  # shown in the table
    endpoint: str
    base: Path  # scratch dir: pod logs, crictl configs
    daemon_pid: int | None  # None: a runtime this suite did not start and cannot measure
    monitors: Callable[[], list[psutil.Process]]  # conmon per container, or a shim per pod
    leftovers: Callable[[], list[str]]
    cgroup_top: str = ""

    def __post_init__(self) -> None:
        self.cgroup_top = self.cgroup_top or f"pycri-bench-{self.key}-{secrets.token_hex(3)}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def kubelet(self, channel: grpc.Channel, times: CallTimes | None = None) -> Kubelet:
        return Kubelet(channel, self.base / "logs", self.cgroup_top, times)

    def daemon_memory(self) -> Memory | None:
        """The daemon and its children, without container monitors (a subreaper may adopt them)."""
        if self.daemon_pid is None:
            return None
        daemon = psutil.Process(self.daemon_pid)
        children = [child for child in daemon.children(recursive=True) if child.name() not in MONITOR_NAMES]
        return Memory.of([daemon, *children])

    def monitor_memory(self) -> Memory:
        return Memory.of(self.monitors())

    def remove_cgroups(self) -> list[str]:
        """Remove this side's pod cgroups; name any that would not go."""
        for directory in cgroup_dirs(self.cgroup_top):
            remove_cgroup_tree(directory)
        return [f"cgroup {path}" for path in sorted(cgroup_dirs(self.cgroup_top))]

    def version(self) -> None:
        with self.channel() as channel:
            api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=10)


def warn_leftovers(name: str, found: list[str]) -> None:
    if found:
        print(f"WARNING: {name} left behind after removing its pods:", *found, sep="\n  ", file=sys.stderr)


def processes_named(name: str, marker: str) -> list[psutil.Process]:
    """Processes called `name` with `marker` in an argument."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == name and any(marker in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def _close(side: Side) -> None:
    wait_for(lambda: not side.monitors(), MONITORS_EXIT_SECONDS)
    warn_leftovers(side.name, side.leftovers() + side.remove_cgroups())


@contextlib.contextmanager
def pycri_side(pause_image: str) -> Iterator[Side]:
    settings = {"log_level": "info", "runtime": {"pause_image": pause_image}}
    with running_node(settings) as node:
        assert node.daemon.proc is not None
        side = Side(
            "pycri", "pycri", node.daemon.endpoint, node.base, node.daemon.proc.pid,
            monitors=lambda: processes_named("conmon", str(node.base)),
            leftovers=lambda: _pycri_leftovers(node),
        )  # fmt: skip
        print(f"pycri: pid {side.daemon_pid}, pod network {node.network.subnet} on {node.network.bridge}, "
              f"dirs under {node.base}", flush=True)  # fmt: skip
        try:
            yield side
        finally:
            _close(side)


def _pycri_leftovers(node: Node) -> list[str]:
    found = [f"conmon pid {process.pid}" for process in processes_named("conmon", str(node.base))]
    found += [f"mount {point}" for point in mounts_under(node.base)]
    found += [f"nat rule {line}" for line in nat_rules_in(node.network.subnet)]
    found += [f"pod address {address}" for address in node.network.ip_files()]
    return found


@contextlib.contextmanager
def containerd_side(registry_host: str, pause_image: str) -> Iterator[Side]:
    with host_network_state():
        containerd = IsolatedContainerd(registry_host, pause_image)
        try:
            containerd.start()
            side = Side(
                "peer", f"containerd {containerd_version()}", containerd.endpoint, containerd.base, containerd.pid,
                monitors=containerd.shims, leftovers=containerd.leftovers,
            )  # fmt: skip
            print(f"containerd: pid {side.daemon_pid}, pod network {SUBNET} on {BRIDGE}, "
                  f"dirs under {containerd.base}", flush=True)  # fmt: skip
            try:
                yield side
            finally:
                _close(side)
        finally:
            warn_leftovers("containerd (after it stopped)", containerd.stop())


@contextlib.contextmanager
def endpoint_side(endpoint: str, pid: int | None) -> Iterator[Side]:
    """A CRI runtime this suite did not start: its memory is read only when its `pid` is given."""
    base = short_tempdir("bench-peer-")
    side = Side(
        "peer", endpoint, endpoint, base, pid,
        monitors=lambda: [p for p in psutil.process_iter(["name"]) if p.info["name"] in MONITOR_NAMES][:0],
        leftovers=lambda: [],
    )  # fmt: skip
    try:
        yield side
    finally:
        warn_leftovers(side.name, side.remove_cgroups())
        remove_tree(base)

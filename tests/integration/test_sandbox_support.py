"""Helpers for the pod sandbox tests (no tests here): a pycri on a private pod network and a
small client that removes every pod it made.

The network is pycri's default conflist with a bridge (pycrit<random>), a subnet
(10.233.<random>.0/24) and a host-local data dir of its own, written into the daemon's
CNI conf dir before it starts; the bridge is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from pycri.api import api_pb2, api_pb2_grpc
from pycri.network.cni_config import DEFAULT_CONFLIST_FILE, default_conflist
from pycri.network.cni_exec import DEFAULT_BIN_DIRS
from tests.integration.test_cni import nat_rules, remove_shared_portmap_chains
from tests.support.daemon import PycriProcess, mounts_under, remove_tree, short_tempdir

TEST_NAMESPACE = "sandbox-test"
CONTAINER_PID = api_pb2.NamespaceMode.CONTAINER
NODE = api_pb2.NamespaceMode.NODE


@dataclass(frozen=True)
class PodNetwork:
    bridge: str
    subnet: str
    ipam_dir: Path

    def conflist(self) -> dict[str, Any]:
        return default_conflist(self.subnet, self.bridge, self.ipam_dir)

    def ip_files(self) -> list[str]:
        """Addresses host-local holds for pods."""
        store = self.ipam_dir / "pycri"
        if not store.exists():
            return []
        return sorted(p.name for p in store.iterdir() if p.name != "lock" and not p.name.startswith("last_"))


def write_conflist(conf_dir: Path, document: dict[str, Any]) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / DEFAULT_CONFLIST_FILE).write_text(json.dumps(document))


@dataclass
class Node:
    """A running pycri with its own dirs and pod network."""

    daemon: PycriProcess
    network: PodNetwork

    @property
    def base(self) -> Path:
        return self.daemon.base

    def sandbox_dirs(self) -> list[Path]:
        return [
            entry
            for parent in (
                self.base / "root" / "sandboxes",
                self.base / "root" / "userns" / "sandboxes",
                self.base / "state" / "sandboxes",
            )
            if parent.exists()
            for entry in parent.iterdir()
        ]

    def sandbox_mounts(self) -> list[Path]:
        return [
            *mounts_under(self.base / "state" / "sandboxes"),
            *mounts_under(self.base / "root" / "userns" / "sandboxes"),
        ]


def require_cni_plugins() -> None:
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not any((directory / plugin).exists() for directory in DEFAULT_BIN_DIRS):
            pytest.skip(f"CNI plugin {plugin} is not installed (Debian package containernetworking-plugins)")


@contextlib.contextmanager
def host_network_state() -> Iterator[None]:
    """Put back what the bridge and portmap plugins change on the host beyond their own rules."""
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding_before = forwarding.read_text()
    portmap_chains_before = ":CNI-HOSTPORT-DNAT" in nat_rules()
    try:
        yield
    finally:
        forwarding.write_text(forwarding_before)
        if not portmap_chains_before:
            remove_shared_portmap_chains()


@contextlib.contextmanager
def running_node(
    settings: dict[str, Any] | None = None, make_daemon: Callable[[Path, dict[str, Any]], PycriProcess] = PycriProcess
) -> Iterator[Node]:
    """A pycri on a private pod network; a test may rewrite the conflist (pycri re-reads it).
    `make_daemon` makes the daemon from its base dir and settings (another kind runs another pycri)."""
    require_cni_plugins()
    base = short_tempdir()
    network = PodNetwork(
        bridge=f"pycrit{secrets.token_hex(3)}", subnet=f"10.233.{secrets.randbelow(256)}.0/24", ipam_dir=base / "ipam"
    )
    daemon = make_daemon(base, settings or {})
    try:
        with host_network_state():
            write_conflist(base / "cni", network.conflist())
            daemon.start()
            try:
                yield Node(daemon, network)
            finally:
                with contextlib.suppress(grpc.RpcError):
                    remove_all_pods(daemon)
                daemon.stop()
                subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)
    finally:
        remove_tree(base)


def remove_all_pods(daemon: PycriProcess) -> None:
    with daemon.channel() as channel:
        runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        for pod in runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))


def pod_config(name: str, **fields: Any) -> api_pb2.PodSandboxConfig:
    """A pod of the test namespace with its own PID namespace per container (no pause process)."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace=TEST_NAMESPACE, uid=secrets.token_hex(8)),
        hostname=name,
    )
    config.linux.security_context.namespace_options.pid = CONTAINER_PID
    config.MergeFrom(api_pb2.PodSandboxConfig(**fields))
    return config


@dataclass
class Pods:
    """RuntimeService calls for the pod tests; every pod it ran is removed by `remove_all`."""

    node: Node
    channel: grpc.Channel
    made: list[str] = field(default_factory=list)

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    def run(self, config: api_pb2.PodSandboxConfig, runtime_handler: str = "") -> str:
        request = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        sandbox_id = self.runtime.RunPodSandbox(request).pod_sandbox_id
        self.made.append(sandbox_id)
        return sandbox_id

    def status(self, sandbox_id: str) -> api_pb2.PodSandboxStatus:
        return self.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status

    def info(self, sandbox_id: str) -> dict[str, Any]:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
        return json.loads(self.runtime.PodSandboxStatus(request).info["info"])

    def stop(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove(self, sandbox_id: str) -> None:
        self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def list(self, **filter_fields: Any) -> list[api_pb2.PodSandbox]:
        request = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(**filter_fields))
        return list(self.runtime.ListPodSandbox(request).items)

    def remove_all(self) -> None:
        for sandbox_id in self.made:
            with contextlib.suppress(grpc.RpcError):
                self.remove(sandbox_id)


@contextlib.contextmanager
def pods_on(node: Node, *, remove_at_exit: bool = True) -> Iterator[Pods]:
    with node.daemon.channel() as channel:
        pods = Pods(node, channel)
        try:
            yield pods
        finally:
            if remove_at_exit:
                pods.remove_all()


def rpc_error(call: Any, *args: Any) -> grpc.RpcError:
    """The error a call fails with (the test fails when it succeeds)."""
    with pytest.raises(grpc.RpcError) as failure:
        call(*args)
    return failure.value


def in_netns(netns: str, *command: str) -> str:
    return subprocess.run(["nsenter", f"--net={netns}", *command], check=True, capture_output=True, text=True).stdout


def addresses_in_netns(netns: str, ifname: str) -> list[str]:
    lines = in_netns(netns, "ip", "-o", "-4", "addr", "show", "dev", ifname).splitlines()
    return [line.split()[3].split("/")[0] for line in lines]

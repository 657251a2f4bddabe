"""Pod sandboxes through gRPC against a real pycri: run, status, stop, remove, list, validation."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import (
    NODE,
    Node,
    Pods,
    addresses_in_netns,
    in_netns,
    pod_config,
    pods_on,
    rpc_error,
    running_node,
)

pytestmark = pytest.mark.integration

READY = api_pb2.PodSandboxState.SANDBOX_READY
NOTREADY = api_pb2.PodSandboxState.SANDBOX_NOTREADY


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_node() as running:
        yield running


@pytest.fixture
def pods(node: Node) -> Iterator[Pods]:
    with pods_on(node) as client:
        yield client


def mount_line(point: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(point):
            return fields
    raise AssertionError(f"nothing is mounted at {point}")


def test_run_gives_a_ready_pod_with_its_own_namespaces(pods: Pods, node: Node, tmp_path: Path) -> None:
    config = pod_config(
        "web",
        log_directory=str(tmp_path / "logs"),
        dns_config=api_pb2.DNSConfig(servers=["10.96.0.10"], searches=["svc.cluster.local"], options=["ndots:5"]),
        labels={"app": "web"},
        annotations={"note": "kept"},
    )
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    config.linux.sysctls["kernel.shmmni"] = "1234"
    sandbox_id = pods.run(config)

    assert len(sandbox_id) == 64
    status = pods.status(sandbox_id)
    assert status.state == READY
    assert (status.metadata, status.labels, status.annotations) == (config.metadata, config.labels, config.annotations)
    assert status.runtime_handler == "runc"
    assert ip_address(status.network.ip) in ip_network(node.network.subnet)
    assert node.network.ip_files() == [status.network.ip]
    assert (tmp_path / "logs").is_dir()

    info = pods.info(sandbox_id)
    netns = info["netNamespacePath"]
    assert netns.startswith(str(node.base / "state" / "sandboxes" / sandbox_id))
    assert addresses_in_netns(netns, "eth0") == [status.network.ip]
    assert addresses_in_netns(netns, "lo") == ["127.0.0.1"]
    uts = subprocess.run(["nsenter", f"--uts={info['utsNamespacePath']}", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "web"
    assert in_netns(netns, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "0"
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "0"
    ipc = subprocess.run(
        ["nsenter", f"--ipc={info['ipcNamespacePath']}", "cat", "/proc/sys/kernel/shmmni"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ipc.stdout.strip() == "1234"
    assert Path("/proc/sys/kernel/shmmni").read_text().strip() != "1234"

    assert Path(info["resolvConfPath"]).read_text() == (
        "search svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert Path(info["hostnamePath"]).read_text() == "web\n"
    assert f"{status.network.ip}\tweb\n" in Path(info["hostsPath"]).read_text()
    shm = mount_line(Path(info["shmPath"]))
    assert {"nosuid", "nodev", "noexec"} <= set(shm[5].split(","))
    assert shm[shm.index("-") + 1] == "tmpfs" and "size=65536k" in shm[-1]
    assert Path(info["shmPath"]).stat().st_mode & 0o7777 == 0o1777
    assert info["config"]["metadata"]["name"] == "web" and info["pid"] == 0
    assert info["cniResult"]["ips"][0]["address"].startswith(status.network.ip + "/")


def test_stop_releases_everything_and_is_idempotent(pods: Pods, node: Node) -> None:
    sandbox_id = pods.run(pod_config("stopped"))
    info = pods.info(sandbox_id)
    assert node.network.ip_files()

    pods.stop(sandbox_id)
    status = pods.status(sandbox_id)
    assert status.state == NOTREADY and status.network.ip == ""
    assert node.network.ip_files() == []
    assert node.sandbox_mounts() == []
    assert not Path(info["netNamespacePath"]).exists()
    assert sandbox_id not in subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout

    pods.stop(sandbox_id)
    assert pods.status(sandbox_id).state == NOTREADY


def test_remove_leaves_nothing_and_is_idempotent(pods: Pods, node: Node) -> None:
    sandbox_id = pods.run(pod_config("removed"))
    pods.remove(sandbox_id)  # stops first

    assert rpc_error(pods.status, sandbox_id).code() == grpc.StatusCode.NOT_FOUND
    assert pods.list(id=sandbox_id) == []
    assert node.sandbox_dirs() == [] and node.sandbox_mounts() == []
    assert node.network.ip_files() == []
    pods.remove(sandbox_id)


def test_unknown_ids(pods: Pods) -> None:
    unknown = "0" * 64
    pods.stop(unknown)
    pods.remove(unknown)
    error = rpc_error(pods.status, unknown)
    assert error.code() == grpc.StatusCode.NOT_FOUND and unknown in error.details()


def test_unique_id_prefixes_name_their_pod(pods: Pods) -> None:
    sandbox_id = pods.run(pod_config("prefixed"))
    assert pods.status(sandbox_id[:12]).id == sandbox_id
    assert [pod.id for pod in pods.list(id=sandbox_id[:12])] == [sandbox_id]
    pods.stop(sandbox_id[:12])
    assert pods.status(sandbox_id).state == NOTREADY


def test_host_network_pod(pods: Pods, node: Node) -> None:
    config = pod_config("on-the-host")
    config.hostname = ""
    options = config.linux.security_context.namespace_options
    options.network, options.ipc = NODE, NODE
    sandbox_id = pods.run(config)

    status = pods.status(sandbox_id)
    assert status.state == READY and status.network.ip == ""
    assert status.linux.namespaces.options.network == NODE
    info = pods.info(sandbox_id)
    assert info["netNamespacePath"] == "" and info["utsNamespacePath"] == "" and info["shmPath"] == ""
    assert Path(info["hostnamePath"]).read_text() == socket.gethostname() + "\n"
    assert Path(info["hostsPath"]).read_text() == Path("/etc/hosts").read_text()
    assert Path(info["resolvConfPath"]).read_text() == Path("/etc/resolv.conf").read_text()
    assert node.network.ip_files() == [] and node.sandbox_mounts() == []
    pods.stop(sandbox_id)
    pods.remove(sandbox_id)


def test_sysctls_that_would_change_the_host_are_refused(pods: Pods, node: Node) -> None:
    config = pod_config("host-sysctl")
    config.linux.security_context.namespace_options.network = NODE
    config.linux.sysctls["net.core.somaxconn"] = "1024"
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "net.core.somaxconn" in error.details()

    config = pod_config("host-wide-sysctl")
    config.linux.sysctls["vm.swappiness"] = "1"
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "vm.swappiness" in error.details()
    assert node.sandbox_dirs() == []


def test_reserved_name_conflict(pods: Pods) -> None:
    config = pod_config("twice")
    holder = pods.run(config)
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and holder in error.details()

    config.metadata.attempt = 1
    pods.run(config)
    pods.remove(holder)
    config.metadata.attempt = 0
    pods.run(config)


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
def test_missing_metadata_is_invalid(pods: Pods, node: Node, field: str) -> None:
    config = pod_config("no-metadata")
    setattr(config.metadata, field, "")
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and f"config.metadata.{field}" in error.details()
    assert node.sandbox_dirs() == []


def test_unknown_runtime_handler_is_invalid(pods: Pods) -> None:
    error = rpc_error(pods.run, pod_config("handler"), "no-such-handler")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no-such-handler" in error.details()


def test_list_filters(pods: Pods) -> None:
    front = pods.run(pod_config("front", labels={"tier": "front", "app": "shop"}))
    back = pods.run(pod_config("back", labels={"tier": "back", "app": "shop"}))
    old = pods.run(pod_config("old", labels={"tier": "front", "app": "blog"}))
    pods.stop(old)

    def ids(**filter_fields: object) -> set[str]:
        return {pod.id for pod in pods.list(**filter_fields)}

    assert ids() == {front, back, old}
    assert ids(id=back[:10]) == {back}
    assert ids(id="f" * 64) == set()
    assert ids(state=api_pb2.PodSandboxStateValue(state=READY)) == {front, back}
    assert ids(state=api_pb2.PodSandboxStateValue(state=NOTREADY)) == {old}
    assert ids(label_selector={"tier": "front"}) == {front, old}
    assert ids(label_selector={"tier": "front", "app": "shop"}) == {front}
    assert ids(label_selector={"tier": "front"}, state=api_pb2.PodSandboxStateValue(state=NOTREADY)) == {old}

    (listed,) = pods.list(id=front)
    assert listed.metadata.name == "front" and listed.state == READY and listed.labels["app"] == "shop"
    streamed = pods.runtime.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest())
    assert {pod.id for reply in streamed for pod in reply.pod_sandboxes} == {front, back, old}


def test_pods_run_side_by_side(pods: Pods, node: Node) -> None:
    configs = [pod_config(f"many-{n}") for n in range(4)]
    sandbox_ids = [pods.run(config) for config in configs]
    ips = {pods.status(sandbox_id).network.ip for sandbox_id in sandbox_ids}
    assert len(ips) == 4 and set(node.network.ip_files()) == ips
    for sandbox_id in sandbox_ids:
        pods.remove(sandbox_id)
    assert node.network.ip_files() == [] and node.sandbox_dirs() == [] and node.sandbox_mounts() == []

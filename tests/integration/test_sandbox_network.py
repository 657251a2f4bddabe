"""Pod networking through RunPodSandbox: host ports, pod to pod traffic, and failures half way
through that must leave nothing behind (no netns, no IP, no mount, no row, no dir)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_cni import (
    BUSYBOX,
    POD_PORT,
    free_local_port,
    http_server,
    nat_rules,
    remove_leftover_nat_rules,
    wait_for_http,
)
from tests.integration.test_sandbox_support import (
    Node,
    Pods,
    in_netns,
    pod_config,
    pods_on,
    rpc_error,
    running_node,
    write_conflist,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_node() as running:
        yield running


@pytest.fixture
def pods(node: Node) -> Iterator[Pods]:
    with pods_on(node) as client:
        yield client
    write_conflist(node.base / "cni", node.network.conflist())


def assert_nothing_left(node: Node, pods: Pods, config: api_pb2.PodSandboxConfig) -> None:
    assert node.network.ip_files() == []
    assert node.sandbox_mounts() == []
    assert node.sandbox_dirs() == []
    assert pods.list() == []
    cached_results = node.base / "root" / "cni" / "results"
    assert not cached_results.exists() or not any(cached_results.iterdir())
    # The reserved name is free again.
    pods.remove(pods.run(config))


def published_pod(pods: Pods, name: str, host_port: int) -> tuple[str, str]:
    mapping = api_pb2.PortMapping(container_port=POD_PORT, host_port=host_port, host_ip="127.0.0.1")
    sandbox_id = pods.run(pod_config(name, port_mappings=[mapping]))
    return sandbox_id, pods.info(sandbox_id)["netNamespacePath"]


def test_host_port_reaches_the_pod(pods: Pods, tmp_path: Path) -> None:
    host_port = free_local_port()
    sandbox_id, netns = published_pod(pods, "published", host_port)
    with http_server(Path(netns), tmp_path, "through the host port"):
        assert wait_for_http("127.0.0.1", host_port) == "through the host port"
    assert f"--dport {host_port}" in nat_rules()
    pods.stop(sandbox_id)
    assert f"--dport {host_port}" not in nat_rules()


def test_host_port_taken_by_another_pod_is_refused(pods: Pods, node: Node) -> None:
    host_port = free_local_port()
    holder, _ = published_pod(pods, "holder", host_port)
    error = rpc_error(published_pod, pods, "intruder", host_port)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and holder in error.details()
    assert len(node.network.ip_files()) == 1
    pods.stop(holder)  # a stopped pod publishes nothing
    published_pod(pods, "successor", host_port)


def test_two_pods_reach_each_other(pods: Pods, tmp_path: Path) -> None:
    server = pods.run(pod_config("server"))
    client = pods.run(pod_config("client"))
    server_ip = pods.status(server).network.ip
    with http_server(Path(pods.info(server)["netNamespacePath"]), tmp_path, "pod to pod"):
        wait_for_http(server_ip, POD_PORT)
        url = f"http://{server_ip}:{POD_PORT}/index.html"
        assert in_netns(pods.info(client)["netNamespacePath"], BUSYBOX, "wget", "-q", "-O", "-", url) == "pod to pod"


def test_failing_sysctl_after_cni_add_undoes_everything(pods: Pods, node: Node) -> None:
    config = pod_config("bad-sysctl")
    config.linux.sysctls["net.ipv4.pycri_no_such_sysctl"] = "1"
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pycri_no_such_sysctl" in error.details()
    config.linux.sysctls.clear()
    assert_nothing_left(node, pods, config)


def test_bad_sysctl_value_undoes_everything(pods: Pods, node: Node) -> None:
    config = pod_config("bad-value")
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "not-a-number"
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "ip_unprivileged_port_start" in error.details()
    config.linux.sysctls.clear()
    assert_nothing_left(node, pods, config)


def test_missing_cni_plugin_undoes_everything(pods: Pods, node: Node) -> None:
    conflist = node.network.conflist()
    conflist["plugins"].append({"type": "pycri-no-such-plugin"})
    write_conflist(node.base / "cni", conflist)
    config = pod_config("missing-plugin")
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "pycri-no-such-plugin" in error.details()
    write_conflist(node.base / "cni", node.network.conflist())
    assert_nothing_left(node, pods, config)


def test_invalid_subnet_undoes_everything(pods: Pods, node: Node) -> None:
    conflist = node.network.conflist()
    conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.233.0.0/33"}]]
    write_conflist(node.base / "cni", conflist)
    config = pod_config("bad-subnet")
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "pod network setup failed" in error.details()
    write_conflist(node.base / "cni", node.network.conflist())
    assert_nothing_left(node, pods, config)


def test_no_network_config_is_a_failed_precondition(pods: Pods, node: Node) -> None:
    for path in (node.base / "cni").iterdir():
        path.unlink()
    config = pod_config("no-network")
    error = rpc_error(pods.run, config)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not ready" in error.details()
    write_conflist(node.base / "cni", node.network.conflist())
    assert_nothing_left(node, pods, config)


def test_stop_with_the_netns_already_gone_still_releases_the_ip(pods: Pods, node: Node) -> None:
    sandbox_id = pods.run(pod_config("lost-netns"))
    netns = pods.info(sandbox_id)["netNamespacePath"]
    subprocess.run(["umount", netns], check=True)
    pods.stop(sandbox_id)
    assert node.network.ip_files() == []
    remove_leftover_nat_rules(sandbox_id)  # the bridge plugin finds its masquerade rule through the netns

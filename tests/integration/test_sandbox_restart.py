"""Pod sandboxes across daemon restarts: kept, marked NOTREADY when their namespaces are gone,
torn down when pycri died while setting one up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from pycri.api import api_pb2
from tests.integration.test_cni import remove_leftover_nat_rules
from tests.integration.test_sandbox_support import Node, addresses_in_netns, pod_config, pods_on, running_node

pytestmark = pytest.mark.integration

READY = api_pb2.PodSandboxState.SANDBOX_READY
NOTREADY = api_pb2.PodSandboxState.SANDBOX_NOTREADY


@pytest.fixture
def node() -> Iterator[Node]:
    with running_node() as running:
        yield running


def restart(node: Node) -> None:
    assert node.daemon.stop() == 0
    node.daemon.start()


def run_pod(node: Node, name: str) -> str:
    """A pod that outlives this client (running_node removes what is left at the end)."""
    with pods_on(node, remove_at_exit=False) as pods:
        return pods.run(pod_config(name))


def test_pods_outlive_a_daemon_restart(node: Node) -> None:
    sandbox_id = run_pod(node, "survivor")
    with pods_on(node, remove_at_exit=False) as pods:
        ip = pods.status(sandbox_id).network.ip
        netns = pods.info(sandbox_id)["netNamespacePath"]
    assert node.daemon.stop() == 0
    assert addresses_in_netns(netns, "eth0") == [ip]
    node.daemon.start()
    with pods_on(node) as pods:
        status = pods.status(sandbox_id)
        assert (status.state, status.network.ip) == (READY, ip)
        assert [pod.id for pod in pods.list()] == [sandbox_id]
        pods.remove(sandbox_id)
    assert node.network.ip_files() == [] and node.sandbox_mounts() == [] and node.sandbox_dirs() == []


def test_pods_whose_namespaces_vanished_are_not_ready(node: Node) -> None:
    sandbox_id = run_pod(node, "rebooted")
    assert node.daemon.stop() == 0
    for point in node.sandbox_mounts():  # what a reboot does to /run
        subprocess.run(["umount", str(point)], check=True)
    node.daemon.start()
    with pods_on(node) as pods:
        status = pods.status(sandbox_id)
        assert status.state == NOTREADY and status.metadata.name == "rebooted"
        assert node.network.ip_files() != []  # host-local's store outlives a reboot: stop must release it
        pods.stop(sandbox_id)
        assert node.network.ip_files() == []
        pods.remove(sandbox_id)
    # A real reboot empties the nat table; here the rule the bridge plugin could not find stays.
    remove_leftover_nat_rules(sandbox_id)
    assert node.sandbox_dirs() == []


def test_restart_with_nothing_changed_keeps_stopped_pods(node: Node) -> None:
    sandbox_id = run_pod(node, "stopped-before")
    with pods_on(node, remove_at_exit=False) as pods:
        pods.stop(sandbox_id)
    restart(node)
    with pods_on(node) as pods:
        assert pods.status(sandbox_id).state == NOTREADY
        pods.stop(sandbox_id)
        pods.remove(sandbox_id)

"""crictl drives a pod and its container through their whole life against pycri: runp, create,
start, ps, pods, inspect, inspectp, logs, exec -s, stats, statsp, stop, rm, stopp, rmp."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_sandbox_support import TEST_NAMESPACE, Node
from tests.support.busybox_images import TestImages
from tests.support.crictl import crictl, crictl_ok, needs_crictl
from tests.support.pods import remove_pod_cgroup, wait_until

pytestmark = [pytest.mark.integration, needs_crictl]

CONTAINER_PID = 1  # NamespaceMode CONTAINER in crictl's JSON: every container has its own PID namespace


def write_json(path: Path, document: dict[str, Any]) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def pod_file(tmp_path: Path, name: str) -> str:
    return write_json(
        tmp_path / "pod.json",
        {
            "metadata": {"name": name, "namespace": TEST_NAMESPACE, "uid": secrets.token_hex(8), "attempt": 0},
            "hostname": name,
            "log_directory": str(tmp_path / "logs"),
            "labels": {"made-by": "crictl-test"},
            "linux": {"security_context": {"namespace_options": {"pid": CONTAINER_PID}}},
        },
    )


def container_file(tmp_path: Path, image: str) -> str:
    return write_json(
        tmp_path / "container.json",
        {
            "metadata": {"name": "talker"},
            "image": {"image": image},
            "command": ["sh", "-c", "echo hello from crictl; exec sleep 3600"],
            "log_path": "talker.log",
            "labels": {"role": "talker"},
            "linux": {"security_context": {"namespace_options": {"pid": CONTAINER_PID}}},
        },
    )


@pytest.fixture
def crictl_pods(node: Node) -> Iterator[list[str]]:
    """Ids of the pods a test runs with crictl; removed (with pycri's leftover cgroup) afterwards."""
    made: list[str] = []
    yield made
    for sandbox_id in made:
        crictl(node.daemon.endpoint, "rmp", "-f", sandbox_id)
        remove_pod_cgroup(sandbox_id)


def test_crictl_runs_a_pod_and_its_container_through_their_whole_life(
    node: Node, test_images: TestImages, tmp_path: Path, crictl_pods: list[str]
) -> None:
    endpoint = node.daemon.endpoint
    image = test_images.busybox.reference
    crictl_ok(endpoint, "pull", image)

    pod_config = pod_file(tmp_path, "crictl-pod")
    sandbox_id = crictl_ok(endpoint, "runp", pod_config).strip()
    crictl_pods.append(sandbox_id)
    assert crictl_ok(endpoint, "pods", "-q", "--id", sandbox_id).split() == [sandbox_id]
    pod = json.loads(crictl_ok(endpoint, "inspectp", sandbox_id))
    assert pod["status"]["state"] == "SANDBOX_READY" and pod["status"]["metadata"]["name"] == "crictl-pod"
    assert ip_address(pod["status"]["network"]["ip"]) in ip_network(node.network.subnet)

    container_id = crictl_ok(endpoint, "create", "--no-pull", sandbox_id, container_file(tmp_path, image), pod_config)
    container_id = container_id.strip()
    crictl_ok(endpoint, "start", container_id)
    assert crictl_ok(endpoint, "ps", "-q", "--pod", sandbox_id, "--state", "Running").split() == [container_id]
    inspected = json.loads(crictl_ok(endpoint, "inspect", container_id))
    assert inspected["status"]["state"] == "CONTAINER_RUNNING" and inspected["info"]["sandboxID"] == sandbox_id
    assert inspected["status"]["logPath"] == str(tmp_path / "logs" / "talker.log")

    wait_until(lambda: "hello from crictl" in crictl_ok(endpoint, "logs", container_id), "the container's log line")
    assert crictl_ok(endpoint, "exec", "-s", container_id, "echo", "exec works").strip() == "exec works"

    stats = json.loads(crictl_ok(endpoint, "stats", "-o", "json", "--id", container_id))
    (container_stats,) = stats["stats"]
    assert container_stats["attributes"]["id"] == container_id
    assert int(container_stats["memory"]["workingSetBytes"]["value"]) > 0
    pod_stats = json.loads(crictl_ok(endpoint, "statsp", "-o", "json", "--id", sandbox_id))
    (only_pod,) = pod_stats["stats"]
    assert only_pod["attributes"]["id"] == sandbox_id
    assert [c["attributes"]["id"] for c in only_pod["linux"]["containers"]] == [container_id]

    crictl_ok(endpoint, "stop", "--timeout", "0", container_id)
    assert crictl_ok(endpoint, "ps", "-a", "-q", "--pod", sandbox_id, "--state", "Exited").split() == [container_id]
    crictl_ok(endpoint, "rm", container_id)
    assert crictl_ok(endpoint, "ps", "-a", "-q", "--pod", sandbox_id).split() == []

    crictl_ok(endpoint, "stopp", sandbox_id)
    assert json.loads(crictl_ok(endpoint, "inspectp", sandbox_id))["status"]["state"] == "SANDBOX_NOTREADY"
    crictl_ok(endpoint, "rmp", sandbox_id)
    assert crictl_ok(endpoint, "pods", "-q", "--id", sandbox_id).split() == []

"""crictl's pod commands against pycri: runp, pods, inspectp, stopp, rmp."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_sandbox_support import TEST_NAMESPACE, Node, running_node
from tests.support.crictl import crictl, crictl_ok, needs_crictl

pytestmark = [pytest.mark.integration, needs_crictl]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_node() as running:
        yield running


def pod_file(directory: Path, name: str, **extra: object) -> Path:
    """A pod config as crictl reads it (the JSON form of PodSandboxConfig)."""
    config = {
        "metadata": {"name": name, "namespace": TEST_NAMESPACE, "uid": secrets.token_hex(8), "attempt": 0},
        "hostname": name,
        "log_directory": str(directory / "logs" / name),
        "labels": {"app": name},
        "dns_config": {"servers": ["10.96.0.10"]},
        "linux": {"security_context": {"namespace_options": {"pid": 1}}},
        **extra,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def test_crictl_pod_lifecycle(node: Node, tmp_path: Path) -> None:
    endpoint = node.daemon.endpoint
    sandbox_id = crictl_ok(endpoint, "runp", str(pod_file(tmp_path, "crictl-web"))).strip()
    assert len(sandbox_id) == 64

    listed = crictl_ok(endpoint, "pods", "--name", "crictl-web")
    assert sandbox_id[:13] in listed and "Ready" in listed
    assert crictl_ok(endpoint, "pods", "-q", "--label", "app=crictl-web").split() == [sandbox_id]
    assert crictl_ok(endpoint, "pods", "-q", "--id", sandbox_id[:8]).split() == [sandbox_id]

    inspected = json.loads(crictl_ok(endpoint, "inspectp", sandbox_id[:8]))
    assert inspected["status"]["id"] == sandbox_id
    assert inspected["status"]["state"] == "SANDBOX_READY"
    assert inspected["status"]["network"]["ip"]
    assert inspected["info"]["config"]["metadata"]["name"] == "crictl-web"
    assert Path(inspected["info"]["resolvConfPath"]).read_text() == "nameserver 10.96.0.10\n"

    crictl_ok(endpoint, "stopp", sandbox_id)
    assert "NotReady" in crictl_ok(endpoint, "pods", "--id", sandbox_id)
    assert crictl_ok(endpoint, "pods", "-q", "--state", "ready").split() == []
    assert node.network.ip_files() == []

    crictl_ok(endpoint, "rmp", sandbox_id)
    assert crictl_ok(endpoint, "pods", "-q").split() == []
    assert node.sandbox_dirs() == [] and node.sandbox_mounts() == []


def test_crictl_rmp_force_stops_a_ready_pod(node: Node, tmp_path: Path) -> None:
    endpoint = node.daemon.endpoint
    sandbox_id = crictl_ok(endpoint, "runp", str(pod_file(tmp_path, "crictl-forced"))).strip()
    crictl_ok(endpoint, "rmp", "--force", sandbox_id)
    assert node.network.ip_files() == [] and node.sandbox_dirs() == []


def test_crictl_runp_reports_a_name_conflict(node: Node, tmp_path: Path) -> None:
    endpoint = node.daemon.endpoint
    path = pod_file(tmp_path, "crictl-twice")
    holder = crictl_ok(endpoint, "runp", str(path)).strip()
    again = crictl(endpoint, "runp", str(path))
    assert again.returncode != 0 and "AlreadyExists" in again.stderr and holder in again.stderr
    crictl_ok(endpoint, "rmp", "--force", holder)

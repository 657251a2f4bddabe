"""Pods whose containers share one PID namespace: the pause process is its PID 1."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import Node, Pods, pod_config, pods_on, rpc_error, running_node
from tests.support.busybox_images import TestImages
from tests.support.crictl import crictl_ok, needs_crictl

pytestmark = pytest.mark.integration

READY = api_pb2.PodSandboxState.SANDBOX_READY
NOTREADY = api_pb2.PodSandboxState.SANDBOX_NOTREADY


@pytest.fixture(scope="module")
def node(test_images: TestImages) -> Iterator[Node]:
    with running_node({"runtime": {"pause_image": test_images.pause.reference}}) as running:
        yield running


@pytest.fixture
def pods(node: Node) -> Iterator[Pods]:
    with pods_on(node) as client:
        yield client


def shared_pid_pod(name: str) -> api_pb2.PodSandboxConfig:
    config = pod_config(name)
    config.linux.security_context.namespace_options.pid = api_pb2.NamespaceMode.POD
    return config


def namespace_inode(link: str) -> int:
    """The inode of a namespace as /proc/<pid>/ns/<kind> names it ("net:[4026532281]")."""
    return int(os.readlink(link).split("[")[1].rstrip("]"))


def pid_in_its_namespace(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid line for {pid}")


def runc_ids(node: Node) -> str:
    root = node.base / "state" / "runc"
    return subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True).stdout


def leases(node: Node, owner: str) -> list[tuple[str]]:
    with sqlite3.connect(node.base / "root" / "pycri.db") as db:
        rows = db.execute("SELECT chain_id FROM snapshot_leases WHERE owner = ?", (owner,)).fetchall()
    db.close()
    return rows


def wait_until_gone(pid: int) -> None:
    """Returns once the process is gone; the deadline only bounds a broken run."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_pause_is_pid_1_of_the_pod(pods: Pods, node: Node) -> None:
    sandbox_id = pods.run(shared_pid_pod("shared"))
    assert pods.status(sandbox_id).state == READY
    info = pods.info(sandbox_id)
    pid = info["pid"]
    assert pid > 0 and pid_in_its_namespace(pid) == 1
    for kind, pin in (("net", "netNamespacePath"), ("ipc", "ipcNamespacePath"), ("uts", "utsNamespacePath")):
        assert namespace_inode(f"/proc/{pid}/ns/{kind}") == os.stat(info[pin]).st_ino, kind
    assert namespace_inode(f"/proc/{pid}/ns/pid") != namespace_inode("/proc/self/ns/pid")
    assert sandbox_id in runc_ids(node)
    assert leases(node, sandbox_id)

    pods.stop(sandbox_id)
    wait_until_gone(pid)
    assert not Path(f"/proc/{pid}").exists()
    assert pods.status(sandbox_id).state == NOTREADY and pods.info(sandbox_id)["pid"] == 0
    assert sandbox_id not in runc_ids(node)
    assert leases(node, sandbox_id) == []
    assert node.sandbox_mounts() == [] and node.network.ip_files() == []
    pods.remove(sandbox_id)
    assert node.sandbox_dirs() == []


def test_pod_is_not_ready_once_its_pause_process_dies(pods: Pods, node: Node) -> None:
    sandbox_id = pods.run(shared_pid_pod("fragile"))
    pid = pods.info(sandbox_id)["pid"]
    os.kill(pid, 9)  # the pod's own PID 1, which this test made
    wait_until_gone(pid)
    deadline = time.monotonic() + 30
    while pods.status(sandbox_id).state == READY and time.monotonic() < deadline:
        time.sleep(0.05)  # conmon records the exit just after the process is gone
    assert pods.status(sandbox_id).state == NOTREADY
    pods.stop(sandbox_id)
    pods.remove(sandbox_id)
    assert sandbox_id not in runc_ids(node)
    assert node.sandbox_mounts() == [] and node.sandbox_dirs() == [] and node.network.ip_files() == []


def test_pause_process_outlives_a_daemon_restart(node: Node) -> None:
    with pods_on(node, remove_at_exit=False) as pods:
        sandbox_id = pods.run(shared_pid_pod("lasting"))
        pid = pods.info(sandbox_id)["pid"]
    assert node.daemon.stop() == 0
    assert Path(f"/proc/{pid}").exists()
    node.daemon.start()
    with pods_on(node) as pods:
        assert pods.status(sandbox_id).state == READY
        assert pods.info(sandbox_id)["pid"] == pid
        pods.remove(sandbox_id)
    wait_until_gone(pid)
    assert not Path(f"/proc/{pid}").exists()


def test_missing_pause_image_undoes_everything(registry: object, test_images: TestImages) -> None:
    missing = f"{test_images.registry_host}/pycri-test/no-such-pause:1"
    with running_node({"runtime": {"pause_image": missing}}) as broken, pods_on(broken) as pods:
        config = shared_pid_pod("no-pause")
        error = rpc_error(pods.run, config)
        assert error.code() == grpc.StatusCode.NOT_FOUND and "no-such-pause" in error.details()
        assert broken.network.ip_files() == [] and broken.sandbox_mounts() == [] and broken.sandbox_dirs() == []
        assert pods.list() == []
        assert runc_ids(broken).split() == []


@needs_crictl
def test_crictl_default_pod_gets_a_pause_process(node: Node, tmp_path: Path) -> None:
    """crictl's plainest pod sets no namespace options, so its PID namespace is shared."""
    pod_file = tmp_path / "pod.json"
    metadata = {"name": "crictl-default", "namespace": "sandbox-test", "uid": "crictl-default-uid"}
    pod_file.write_text(json.dumps({"metadata": metadata, "log_directory": str(tmp_path / "logs")}))
    endpoint = node.daemon.endpoint
    sandbox_id = crictl_ok(endpoint, "runp", str(pod_file)).strip()
    inspected = json.loads(crictl_ok(endpoint, "inspectp", sandbox_id))
    assert inspected["status"]["state"] == "SANDBOX_READY"
    pid = inspected["info"]["pid"]
    assert pid > 0 and pid_in_its_namespace(pid) == 1
    crictl_ok(endpoint, "stopp", sandbox_id)
    wait_until_gone(pid)
    crictl_ok(endpoint, "rmp", sandbox_id)
    assert sandbox_id not in runc_ids(node) and node.sandbox_dirs() == []

"""The systemd driver against a real systemd (PID 1) over the system bus: a plain process
standing in for conmon, then pods and containers under runc --systemd-cgroup. Skipped where
systemd is not PID 1 (containers, this CI)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.cgroups import CgroupManager, make_cgroup_manager
from tests.integration.test_sandbox_support import running_node
from tests.support.busybox_images import TestImages
from tests.support.pods import container_config, workloads_on


def systemd_is_pid_1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not systemd_is_pid_1(), reason="systemd is not PID 1 here: no systemd D-Bus API to drive"),
]


@pytest.fixture
async def cgroups() -> AsyncIterator[CgroupManager]:
    manager = make_cgroup_manager("systemd", f"pycri-test{secrets.token_hex(4)}.slice", "pod")
    yield manager
    await manager.remove(manager.parent)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "1000"])
    yield process
    process.kill()
    process.wait()


async def test_conmon_scope_in_a_pod_slice_pycri_made(cgroups: CgroupManager, sleeper: subprocess.Popen[bytes]) -> None:
    pod = cgroups.pod_parent("", "feed")
    await asyncio.to_thread(cgroups.create_pod_parent, pod)

    await asyncio.to_thread(cgroups.place_conmon, pod, "worker", sleeper.pid)
    scope = cgroups.container_path(pod, "conmon-worker")
    stats = cgroups.read_stats(scope)

    memberships = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
    assert f"/{cgroups.directory(scope)}" in memberships
    assert cgroups.children(pod) == ["conmon-worker"]
    assert stats.pids == 1
    with pytest.raises(OSError):
        await cgroups.remove(pod)

    sleeper.kill()
    sleeper.wait()
    await cgroups.remove(pod)  # stopping the slice stops the emptied scope in it
    assert not cgroups.exists(pod)


def test_pods_run_and_report_stats_with_runc_under_the_systemd_driver(test_images: TestImages) -> None:
    """The whole path a kubelet with the systemd cgroup driver takes: runc --systemd-cgroup
    makes the container scopes in pycri's pod slice, and the stats RPCs read them back."""
    settings = {"runtime": {"pause_image": test_images.pause.reference, "cgroup_driver": "systemd"}}
    with running_node(settings) as node, workloads_on(node) as work:
        work.pull(test_images.busybox.reference)
        pod = work.pod("systemd-driven")
        container_id = work.run(pod, container_config("sleeper", test_images.busybox.reference, "sleep", "3600"))
        assert work.info(container_id)["cgroupsPath"] == f"pycri-pod{pod.id}.slice:pycri:{container_id}"
        stats = work.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=container_id)).stats
        assert stats.memory.working_set_bytes.value > 0 and stats.cpu.timestamp > 0
        pod_stats = work.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod.id)).stats
        assert pod_stats.linux.memory.working_set_bytes.value > 0

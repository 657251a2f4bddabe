"""The cgroupfs manager against this host's real cgroup hierarchies, with plain processes."""

import asyncio
import errno
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from pycri.cgroups import CgroupManager, host_layout, make_cgroup_manager
from pycri.stats.cgroup_reading import read_cgroup

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALLOCATED = 32 * 1024 * 1024
# Waits for a line, then touches ALLOCATED bytes, burns some CPU, says "ready" and waits for EOF.
WORKER_PROGRAM = f"""
import sys
sys.stdin.readline()
block = b"x" * {ALLOCATED}
sum(range(2_000_000))
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
async def cgroups() -> AsyncIterator[CgroupManager]:
    """A cgroupfs manager whose configured parent is a fresh cgroup, removed afterwards."""
    manager = make_cgroup_manager("cgroupfs", f"/pycri-test-{secrets.token_hex(4)}", "pod")
    yield manager
    await manager.remove(manager.parent)


@pytest.fixture
def worker() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    process.kill()
    process.wait()


async def start_work(worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write("go\n")
    worker.stdin.flush()
    assert await asyncio.to_thread(worker.stdout.readline) == "ready\n"


def memberships(pid: int) -> list[str]:
    return open(f"/proc/{pid}/cgroup").read().splitlines()


def test_host_layout_matches_the_mounts() -> None:
    layout = host_layout()

    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        assert layout.unified is not None
    else:
        assert layout.unified is None
        assert {"memory", "cpuacct"} <= set(layout.v1)


async def test_stats_of_a_conmon_leaf_with_a_working_process(
    cgroups: CgroupManager, worker: subprocess.Popen[str]
) -> None:
    pod = cgroups.pod_parent("", "feed")
    leaf = cgroups.container_path(pod, "conmon-worker")
    assert not cgroups.exists(leaf)

    cgroups.place_conmon(pod, "worker", worker.pid)
    await start_work(worker)
    stats = cgroups.read_stats(leaf)
    pod_stats = cgroups.read_stats(pod)
    reading = read_cgroup(cgroups, leaf)

    assert cgroups.exists(leaf)
    assert cgroups.children(pod) == ["conmon-worker"]
    assert all(line.endswith(f":{leaf}") for line in memberships(worker.pid) if ":cpuset:" not in line)
    assert stats.memory_usage >= ALLOCATED
    assert ALLOCATED <= stats.memory_rss <= stats.memory_usage
    assert 0 < stats.memory_working_set <= stats.memory_usage
    assert stats.cpu_usage_ns > 0
    assert stats.page_faults >= ALLOCATED // os.sysconf("SC_PAGE_SIZE")
    assert stats.pids == 1
    assert stats.memory_limit is None
    assert pod_stats.memory_usage >= stats.memory_usage
    assert pod_stats.cpu_usage_ns >= stats.cpu_usage_ns
    assert reading is not None and reading.details.pids == (worker.pid,)
    assert reading.processes.file_descriptors >= 3


async def test_conmon_joins_the_cpuset_hierarchy_with_its_parents_cpus(
    cgroups: CgroupManager, worker: subprocess.Popen[str]
) -> None:
    cpuset = cgroups.layout.v1.get("cpuset")
    if cpuset is None:
        pytest.skip("no v1 cpuset hierarchy on this host")
    pod = cgroups.pod_parent("", "feed")

    cgroups.place_conmon(pod, "worker", worker.pid)

    leaf = cpuset / cgroups.directory(cgroups.container_path(pod, "conmon-worker"))
    assert (leaf / "cpuset.cpus").read_text() == (cpuset / "cpuset.cpus").read_text()
    assert str(worker.pid) in (leaf / "cgroup.procs").read_text().split()


async def test_remove_refuses_a_busy_cgroup_then_is_idempotent(
    cgroups: CgroupManager, worker: subprocess.Popen[str]
) -> None:
    pod = cgroups.pod_parent("", "feed")
    cgroups.place_conmon(pod, "busy", worker.pid)

    with pytest.raises(OSError) as refused:
        await cgroups.remove(pod)
    worker.kill()
    worker.wait()
    await cgroups.remove(pod)
    await cgroups.remove(pod)

    assert refused.value.errno == errno.EBUSY
    assert not cgroups.exists(pod)
    with pytest.raises(FileNotFoundError):
        cgroups.read_stats(cgroups.container_path(pod, "conmon-busy"))

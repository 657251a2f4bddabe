"""The cgroup readers against this host's real cgroup hierarchies, with plain processes."""

import asyncio
import errno
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from pycri.stats import cgroups

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
async def parent() -> AsyncIterator[str]:
    path = f"/pycri-test-{secrets.token_hex(4)}"
    yield path
    await cgroups.remove_cgroup(path)


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


def test_host_layout_matches_the_mounts() -> None:
    layout = cgroups.host_layout()

    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        assert layout.unified is not None
    else:
        assert layout.unified is None
        assert {"memory", "cpuacct"} <= set(layout.v1)


async def test_stats_of_a_cgroup_with_a_working_process(parent: str, worker: subprocess.Popen[str]) -> None:
    child = f"{parent}/worker"
    assert not cgroups.cgroup_exists(child)

    cgroups.join_cgroup(child, worker.pid)
    await start_work(worker)
    stats = cgroups.read_stats(child)
    pod = cgroups.read_stats(parent)

    assert cgroups.cgroup_exists(child)
    assert stats.memory_usage >= ALLOCATED
    assert ALLOCATED <= stats.memory_rss <= stats.memory_usage
    assert 0 < stats.memory_working_set <= stats.memory_usage
    assert stats.cpu_usage_ns > 0
    assert stats.page_faults >= ALLOCATED // os.sysconf("SC_PAGE_SIZE")
    assert stats.pids == 1
    assert stats.memory_limit is None
    assert pod.memory_usage >= stats.memory_usage
    assert pod.cpu_usage_ns >= stats.cpu_usage_ns


async def test_remove_refuses_a_busy_cgroup_then_is_idempotent(parent: str, worker: subprocess.Popen[str]) -> None:
    pod = f"{parent}/pod"
    cgroups.join_cgroup(f"{pod}/busy", worker.pid)

    with pytest.raises(OSError) as refused:
        await cgroups.remove_cgroup(pod)
    worker.kill()
    worker.wait()
    await cgroups.remove_cgroup(pod)
    await cgroups.remove_cgroup(pod)

    assert refused.value.errno == errno.EBUSY
    assert not cgroups.cgroup_exists(pod)
    with pytest.raises(FileNotFoundError):
        cgroups.read_stats(f"{pod}/busy")

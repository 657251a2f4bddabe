"""The systemd driver against a real systemd (PID 1) over the system bus, with a plain process
standing in for conmon. Skipped where systemd is not PID 1 (containers, this CI)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycri.cgroups import CgroupManager, make_cgroup_manager


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

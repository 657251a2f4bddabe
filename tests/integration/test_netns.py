"""Namespaces pinned by bind mounts: created, entered, counted and removed for real (root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycri.network.netns import (
    bring_up_loopback,
    create_namespace,
    create_netns,
    in_netns,
    interface_stats,
    is_namespace_pinned,
    remove_namespace,
)

pytestmark = pytest.mark.integration

BUSYBOX = "/bin/busybox"


def mounted_at(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


@pytest.fixture
def ns_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "ns"
    yield directory
    if directory.exists():
        for entry in directory.iterdir():
            remove_namespace(entry)


def test_netns_is_pinned_without_a_process_and_removed_cleanly(ns_dir: Path) -> None:
    path = ns_dir / "pod1"
    create_netns(path)
    assert is_namespace_pinned(path) and mounted_at(path)
    assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino
    # The namespace outlives every process that entered it.
    subprocess.run(
        ["nsenter", f"--net={path}", "ip", "link", "add", "pycrita", "type", "veth", "peer", "name", "pycritb"],
        check=True,
    )
    links = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link"], check=True, capture_output=True, text=True)
    assert "pycrita" in links.stdout
    assert "pycrita" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout

    remove_namespace(path)
    assert not path.exists() and not mounted_at(path) and not is_namespace_pinned(path)
    remove_namespace(path)


def test_existing_path_is_refused_and_left_alone(ns_dir: Path) -> None:
    path = ns_dir / "taken"
    ns_dir.mkdir()
    path.write_text("keep")
    with pytest.raises(FileExistsError):
        create_netns(path)
    assert path.read_text() == "keep" and not mounted_at(path)
    path.unlink()


def test_uts_namespace_has_the_pod_hostname(ns_dir: Path) -> None:
    path = ns_dir / "uts"
    create_namespace("uts", path, hostname="pod-host-1")
    name = subprocess.run(["nsenter", f"--uts={path}", "hostname"], check=True, capture_output=True, text=True)
    assert name.stdout.strip() == "pod-host-1"
    assert os.uname().nodename != "pod-host-1"
    remove_namespace(path)
    assert not mounted_at(path)


def test_ipc_namespace_is_its_own(ns_dir: Path) -> None:
    own = os.readlink("/proc/self/ns/ipc")
    path = ns_dir / "ipc"
    create_namespace("ipc", path)
    assert os.stat(path).st_ino != os.stat("/proc/self/ns/ipc").st_ino
    assert os.readlink("/proc/self/ns/ipc") == own
    remove_namespace(path)


def test_wrong_arguments_leave_nothing(ns_dir: Path) -> None:
    with pytest.raises(ValueError):
        create_namespace("net", ns_dir / "n", hostname="x")
    with pytest.raises(ValueError):
        create_namespace("pid", ns_dir / "p")  # type: ignore[arg-type]
    assert not (ns_dir / "n").exists() and not (ns_dir / "p").exists()


async def test_loopback_and_interface_counters(ns_dir: Path) -> None:
    path = ns_dir / "stats"
    create_netns(path)
    await bring_up_loopback(path)
    async with in_netns(path) as ipr:
        (lo,) = await ipr.link("get", ifname="lo")
        assert lo.get("state") == "up"
    before = await interface_stats(path, "lo")
    ping = [BUSYBOX, "ping", "-c", "3", "127.0.0.1"]
    subprocess.run(["nsenter", f"--net={path}", *ping], check=True, capture_output=True)
    after = await interface_stats(path, "lo")
    assert after.rx_bytes > before.rx_bytes and after.tx_bytes > before.tx_bytes
    assert after.rx_errors == 0 and after.tx_errors == 0
    with pytest.raises(LookupError):
        await interface_stats(path, "eth0")
    remove_namespace(path)


async def test_namespace_threads_do_not_leak_into_the_caller(ns_dir: Path) -> None:
    own = os.readlink(f"/proc/self/task/{os.getpid()}/ns/net")
    path = ns_dir / "leak"
    create_netns(path)
    await interface_stats(path, "lo")
    tasks = os.listdir("/proc/self/task")
    assert all(os.readlink(f"/proc/self/task/{tid}/ns/net") == own for tid in tasks)
    remove_namespace(path)

"""A pycri for one fault test: private dirs, pod network and cgroup parent, started with a kill
point armed; the host-side steps of a simulated reboot; and a teardown that removes whatever a
failed test left (through CRI first, then by pid, mount point and cgroup, only of this daemon).
"""

from __future__ import annotations

import contextlib
import errno
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from pycri.api import api_pb2
from pycri.faults import ENV_VAR
from tests.integration.test_cni import remove_leftover_nat_rules
from tests.integration.test_sandbox_support import Node, PodNetwork, host_network_state, require_cni_plugins
from tests.integration.test_sandbox_support import write_conflist as write_cni_config
from tests.support.busybox_images import TestImages
from tests.support.daemon import PycriProcess, mounts_under, remove_tree, short_tempdir
from tests.support.leaks import LeakScope, cgroup_dirs, cgroup_hierarchies, daemon_processes, pod_network_nat_rules
from tests.support.pods import Workloads

# How long a killed daemon, an exiting process or an emptied cgroup may take: a deadline, not a pause.
SETTLE_SECONDS = 10.0
RPC_TIMEOUT = 60.0


@dataclass
class FaultNode:
    node: Node
    scope: LeakScope
    work: Workloads
    images: TestImages
    armed: str

    @property
    def daemon(self) -> PycriProcess:
        return self.node.daemon

    def pull_images(self) -> None:
        for image in (self.images.busybox, self.images.pause):
            self.work.pull(image.reference)

    def restart_unarmed(self) -> None:
        """Start the daemon again without the kill point (stopping it first if it still runs)."""
        self.daemon.stop()
        self.armed = ""
        self.daemon.start()
        self.work.reconnect()

    def kill_during(self, point: str, operation: Callable[[], object]) -> None:
        """Run `operation`, which must make the daemon SIGKILL itself at `point`."""
        try:
            operation()
        except grpc.RpcError as error:
            failure = f"the call failed with {error.code().name}: {error.details()}"
        else:
            pytest.fail(f"kill point {point} was never reached: the call returned normally")
        assert self.daemon.proc is not None
        try:
            returncode = self.daemon.proc.wait(SETTLE_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kill point {point} was never reached: {failure}, and pycri still runs")
        assert returncode == -signal.SIGKILL, f"pycri exited with {returncode} at {point}, not by SIGKILL"

    def pods(self) -> list[api_pb2.PodSandbox]:
        return list(self.work.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items)

    def remove_everything(self) -> None:
        """Stop and remove every pod (and so every container) through CRI."""
        for pod in self.pods():
            self.work.stop_pod(pod.id)
            self.work.remove_pod(pod.id)
        assert self.pods() == [] and self.work.list() == []


def start_armed(daemon: PycriProcess, point: str) -> None:
    """Start `daemon` with PYCRI_KILL_POINT=point (unarmed when empty)."""
    daemon.env = {ENV_VAR: point} if point else {}
    try:
        daemon.start()
    finally:
        daemon.env = {}


@contextlib.contextmanager
def fault_node(images: TestImages, point: str = "") -> Iterator[FaultNode]:
    """A daemon on a pod network and cgroup parent of its own, `point` armed when not empty."""
    require_cni_plugins()
    base = short_tempdir("pycri-f-")
    network = PodNetwork(
        bridge=f"pycrif{secrets.token_hex(3)}", subnet=f"10.234.{secrets.randbelow(256)}.0/24", ipam_dir=base / "ipam"
    )
    runtime = {"pause_image": images.pause.reference, "cgroup_parent": f"/pycri-faults-{secrets.token_hex(4)}"}
    daemon = PycriProcess(base, {"runtime": runtime})
    try:
        with host_network_state():
            write_cni_config(base / "cni", network.conflist())
            start_armed(daemon, point)
            node = Node(daemon, network)
            fault = FaultNode(node, LeakScope.of(daemon), Workloads(node, daemon.channel()), images, point)
            try:
                yield fault
            finally:
                tear_down(fault)
    finally:
        remove_tree(base)


def tear_down(fault: FaultNode) -> None:
    """Remove what a test left, failed or not: through CRI when the daemon works, then by hand."""
    alive = fault.daemon.proc is not None and fault.daemon.proc.poll() is None
    with contextlib.suppress(RuntimeError, grpc.RpcError, AssertionError):
        if fault.armed or not alive:
            fault.restart_unarmed()
        fault.remove_everything()
    fault.work.channel.close()
    fault.daemon.stop()
    kill_daemon_processes(fault.scope)
    remove_network_leftovers(fault.scope, fault.node.network)
    for point in mounts_under(fault.daemon.base):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    remove_cgroups(fault.scope, including_parent=True)


def simulate_reboot(fault: FaultNode) -> None:
    """What a reboot does to this daemon only, once pycri itself is dead: its conmons and
    containers die, every mount under its dirs goes, its state dir (a tmpfs /run) is empty, its
    cgroups, nat rules and bridge are gone. The root dir and host-local's store stay."""
    assert fault.daemon.proc is not None and fault.daemon.proc.poll() is not None, "stop pycri first"
    kill_daemon_processes(fault.scope)
    for point in mounts_under(fault.scope.config.root_dir):
        subprocess.run(["umount", "-l", str(point)], check=True)
    state_dir = fault.scope.config.state_dir
    for entry in state_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()
    assert mounts_under(state_dir) == [] and list(state_dir.iterdir()) == []
    remove_cgroups(fault.scope, including_parent=True)
    remove_network_leftovers(fault.scope, fault.node.network)


def kill_daemon_processes(scope: LeakScope) -> None:
    """SIGKILL this daemon's conmons and container processes, by pid, and wait until they are gone."""
    processes = daemon_processes(scope)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _gone, alive = psutil.wait_procs(processes, timeout=SETTLE_SECONDS)
    assert alive == [], f"processes of the daemon outlived SIGKILL: {alive}"


def remove_network_leftovers(scope: LeakScope, network: PodNetwork) -> None:
    """The nat rules naming this pod network's addresses, and its bridge."""
    rules = "\n".join(pod_network_nat_rules(scope))
    for sandbox_id in set(re.findall(r'id: \\?"([0-9a-f]{64})', rules)):
        remove_leftover_nat_rules(sandbox_id)
    subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)


def remove_cgroups(scope: LeakScope, *, including_parent: bool) -> None:
    """rmdir the cgroups below the daemon's cgroup parent (and the parent), children first."""
    directories = [directory for _mount, directory in cgroup_dirs(scope)]
    if including_parent:
        directories += [hierarchy / scope.cgroup_parent.lstrip("/") for hierarchy in cgroup_hierarchies()]
    for directory in sorted(directories, key=lambda path: len(path.parts), reverse=True):
        _rmdir_when_empty(directory)


def _rmdir_when_empty(directory: Path) -> None:
    # A cgroup whose last process just exited refuses rmdir (EBUSY) for a moment.
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)

"""The orphan sweep on real orphans: dirs, overlay and tmpfs mounts, pinned namespaces, runc
containers under conmon, cgroups and CNI attachments with host-local IPs, each made in a
private root and state dir (a private cgroup parent, a private CNI network), beside owned
ones that must survive. Each test asserts the sweep removed exactly the orphans."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycri.image.overlay import mount_overlay
from pycri.network.cni import CniManager, PodAttachment
from pycri.network.cni_exec import DEFAULT_BIN_DIRS
from pycri.network.netns import create_namespace, is_namespace_pinned, remove_namespace
from pycri.oci import conmon
from pycri.oci.conmon import ConmonProcess
from pycri.oci.driver import ContainerCreate, ContainerRuntime
from pycri.oci.runtime import ContainerStatus, RuntimeHandler
from pycri.process_exit import wait_for_exit
from pycri.recovery.mounts import read_mountinfo
from pycri.recovery.procs import ConmonArgs, kill_conmon
from pycri.recovery.sweep import Owned, Removal, SweepScope, sweep_orphans
from pycri.sandbox.shm import mount_shm
from tests.integration.test_cni import (  # noqa: F401 - test_network: pytest finds the fixture by its name
    PrivateNetwork,
    ip_files,
    remove_leftover_nat_rules,
    test_network,
)
from tests.integration.test_oci_runtime import TIMEOUTS, make_bundle, process_running
from tests.support.daemon import remove_tree, short_tempdir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

RUNC = Path("/usr/sbin/runc")


def new_id() -> str:
    return secrets.token_hex(32)


def cgroup_dirs(path: str) -> list[Path]:
    """The cgroup's directory in every mounted hierarchy (v1 controllers and any cgroup2)."""
    mounts = {entry.mount_point for entry in read_mountinfo() if entry.fs_type in ("cgroup", "cgroup2")}
    return [Path(mount, path.lstrip("/")) for mount in sorted(mounts)]


def cgroup_exists(path: str) -> bool:
    return any(directory.is_dir() for directory in cgroup_dirs(path))


def make_cgroup(path: str) -> None:
    for directory in cgroup_dirs(path):
        directory.mkdir(parents=True, exist_ok=True)


def remove_cgroup(path: str) -> None:
    for directory in cgroup_dirs(path):
        for below, _, _ in os.walk(directory, topdown=False):
            os.rmdir(below)


class CgroupfsTree:
    """The cgroup operations the sweep takes, straight on the host's cgroupfs hierarchies."""

    def children(self, parent: str) -> list[str]:
        names: set[str] = set()
        for directory in cgroup_dirs(parent):
            if directory.is_dir():
                names |= {child.name for child in directory.iterdir() if child.is_dir()}
        return sorted(names)

    def container_path(self, parent: str, leaf: str) -> str:
        return f"{parent.rstrip('/')}/{leaf}"

    async def remove(self, cgroups_path: str) -> None:
        await asyncio.to_thread(remove_cgroup, cgroups_path)


@dataclass(frozen=True)
class Dirs:
    root: Path
    state: Path

    @property
    def exits(self) -> Path:
        return self.state / "exits"

    @property
    def attach(self) -> Path:
        return self.state / "attach"

    def scope(
        self, runtimes: list[ContainerRuntime] | None = None, cgroup_parents: list[str] | None = None
    ) -> SweepScope:
        return SweepScope(self.root, self.state, runtimes or [], cgroup_parents or [])


@pytest.fixture
def dirs() -> Iterator[Dirs]:
    base = short_tempdir("pycri-sweep-")
    made = Dirs(base / "root", base / "state")
    for directory in (made.root, made.state, made.exits, made.attach):
        directory.mkdir()
    yield made
    remove_tree(base)


def kinds(removals: list[Removal]) -> set[tuple[str, str]]:
    return {(removal.kind, removal.what) for removal in removals}


def logged(caplog: pytest.LogCaptureFixture) -> set[tuple[str, str]]:
    records = [r for r in caplog.records if r.getMessage() == "removed orphan"]
    return {(r.fields["kind"], r.fields["what"]) for r in records}  # type: ignore[attr-defined]


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def make_container_files(dirs: Dirs, container_id: str, lower: Path) -> Path:
    """A container's layer dir with its rootfs overlay mounted, its bundle dir, exit file and attach link."""
    layers = dirs.root / "containers" / container_id
    for name in ("upper", "work", "rootfs"):
        (layers / name).mkdir(parents=True)
    mount_overlay([lower], layers / "rootfs", layers / "upper", layers / "work")
    bundle = dirs.state / "containers" / container_id
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    (dirs.exits / container_id).write_text("0")
    (dirs.attach / container_id).symlink_to(bundle)
    return layers


def make_sandbox_files(dirs: Dirs, sandbox_id: str) -> Path:
    """A sandbox's files and its pinned network and IPC namespaces and /dev/shm."""
    (dirs.root / "sandboxes" / sandbox_id).mkdir(parents=True)
    (dirs.root / "sandboxes" / sandbox_id / "hostname").write_text("pod\n")
    state = dirs.state / "sandboxes" / sandbox_id
    state.mkdir(parents=True)
    create_namespace("net", state / "netns")
    create_namespace("ipc", state / "ipc")
    mount_shm(state / "shm")
    return state


async def test_orphan_files_mounts_and_namespace_pins_go_and_owned_ones_stay(
    dirs: Dirs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lower = tmp_path / "layer"
    lower.mkdir()
    (lower / "from-image").write_text("layer")
    # An image volume: a read-only bind of a snapshot dir whose contents must outlive the sweep.
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "keep").write_text("snapshot data")
    orphan_ctr, owned_ctr, orphan_pod, owned_pod = new_id(), new_id(), new_id(), new_id()
    orphan_layers = make_container_files(dirs, orphan_ctr, lower)
    (orphan_layers / "image-mounts" / "0").mkdir(parents=True)
    mount_overlay([snapshot], orphan_layers / "image-mounts" / "0")
    owned_layers = make_container_files(dirs, owned_ctr, lower)
    orphan_state = make_sandbox_files(dirs, orphan_pod)
    owned_state = make_sandbox_files(dirs, owned_pod)
    (dirs.exits / orphan_pod).write_text("137")  # its pause process's
    (dirs.exits / owned_pod).write_text("137")
    stray_file = dirs.root / "containers" / "stray-file"
    stray_file.write_text("")
    caplog.set_level(logging.WARNING, logger="pycri.recovery.sweep")

    owned = Owned(sandbox_ids=frozenset({owned_pod}), container_ids=frozenset({owned_ctr}))
    removals = await sweep_orphans(dirs.scope(), owned, CgroupfsTree(), None, [])

    assert kinds(removals) == {
        ("mount", str(orphan_layers / "image-mounts" / "0")),
        ("mount", str(orphan_layers / "rootfs")),
        ("netns", str(orphan_state / "netns")),
        ("namespace pin", str(orphan_state / "ipc")),
        ("mount", str(orphan_state / "shm")),
        ("directory", str(orphan_layers)),
        ("directory", str(dirs.state / "containers" / orphan_ctr)),
        ("directory", str(dirs.root / "sandboxes" / orphan_pod)),
        ("directory", str(orphan_state)),
        ("file", str(stray_file)),
        ("exit file", str(dirs.exits / orphan_ctr)),
        ("exit file", str(dirs.exits / orphan_pod)),
        ("attach link", str(dirs.attach / orphan_ctr)),
    }
    assert all(removal.why.startswith("no ") and " owns id " in removal.why for removal in removals)
    assert logged(caplog) == kinds(removals)
    # Unmounted before the dirs went, so the sweep deleted nothing through a mount.
    assert (snapshot / "keep").read_text() == "snapshot data"
    assert (lower / "from-image").read_text() == "layer"
    for gone in (orphan_layers, dirs.state / "containers" / orphan_ctr, orphan_state, dirs.attach / orphan_ctr):
        assert not os.path.lexists(gone)
    assert mounted(owned_layers / "rootfs") and (owned_layers / "rootfs" / "from-image").exists()
    assert is_namespace_pinned(owned_state / "netns") and is_namespace_pinned(owned_state / "ipc")
    assert mounted(owned_state / "shm")
    assert (dirs.state / "containers" / owned_ctr / "config.json").exists()
    assert (dirs.root / "sandboxes" / owned_pod / "hostname").exists()
    assert sorted(os.listdir(dirs.exits)) == sorted([owned_ctr, owned_pod])
    assert os.listdir(dirs.attach) == [owned_ctr]

    assert await sweep_orphans(dirs.scope(), owned, CgroupfsTree(), None, []) == []


@dataclass
class Running:
    request: ContainerCreate
    process: ConmonProcess


@pytest.fixture
async def cgroup_parent() -> AsyncIterator[str]:
    parent = f"/pycri-test-sweep-{secrets.token_hex(4)}"
    yield parent
    await asyncio.to_thread(remove_cgroup, parent)


def container_runtime(handler: RuntimeHandler, exit_dir: Path, socket_dir: Path) -> ContainerRuntime:
    return ContainerRuntime(handler, conmon.DEFAULT_CONMON_PATH, exit_dir, socket_dir, TIMEOUTS)


@pytest.fixture
async def runtime(dirs: Dirs) -> AsyncIterator[ContainerRuntime]:
    if not RUNC.exists() or not conmon.DEFAULT_CONMON_PATH.exists() or not Path("/bin/busybox").exists():
        pytest.skip("needs runc, conmon and busybox-static")
    driver = container_runtime(
        RuntimeHandler(name="runc", path=RUNC, root=dirs.state / "runc"), dirs.exits, dirs.attach
    )
    yield driver
    for state in await driver.list_containers():
        await driver.delete(state.id, force=True)


async def run_container(runtime: ContainerRuntime, container_id: str, bundle: Path, cgroups_path: str) -> Running:
    make_bundle(bundle, ["/bin/sleep", "1000"], cgroups_path)
    request = ContainerCreate(
        container_id=container_id,
        name=f"sweep-{container_id[:8]}",
        bundle=bundle,
        log_path=bundle / "container.log",
    )
    process = await runtime.create(request)
    await runtime.start(container_id)
    return Running(request, process)


async def test_orphan_runc_container_conmon_and_cgroups_go_and_others_stay(
    dirs: Dirs, runtime: ContainerRuntime, cgroup_parent: str
) -> None:
    orphan_pod, owned_pod = new_id(), new_id()
    orphan_ctr, owned_ctr, foreign_ctr = new_id(), new_id(), new_id()
    owned_pod_cgroup = f"{cgroup_parent}/pod-{owned_pod}"
    orphan = await run_container(
        runtime, orphan_ctr, dirs.state / "containers" / orphan_ctr, f"{cgroup_parent}/pod-{orphan_pod}/{orphan_ctr}"
    )
    kept = await run_container(
        runtime, owned_ctr, dirs.state / "containers" / owned_ctr, f"{owned_pod_cgroup}/{owned_ctr}"
    )
    # Another runtime's: its bundle is not under pycri's state dir and its conmon writes elsewhere.
    foreign_base = dirs.root.parent / "foreign"
    foreign_runtime = container_runtime(runtime.handler, foreign_base / "exits", foreign_base / "attach")
    foreign = await run_container(
        foreign_runtime, foreign_ctr, foreign_base / "bundle", f"{cgroup_parent}/foreign/{foreign_ctr}"
    )
    stray_conmon_cgroup, stray_ctr_cgroup = f"conmon-{new_id()}", new_id()
    for name in (stray_conmon_cgroup, stray_ctr_cgroup):
        make_cgroup(f"{owned_pod_cgroup}/{name}")
    make_cgroup(f"{cgroup_parent}/not-pycris")

    owned = Owned(sandbox_ids=frozenset({owned_pod}), container_ids=frozenset({owned_ctr}))
    scope = dirs.scope([runtime], [cgroup_parent, owned_pod_cgroup])
    removals = await sweep_orphans(scope, owned, CgroupfsTree(), None, [])

    # `runc delete --force` kills the container; its conmon then ends by itself or by the sweep's
    # SIGKILL, whichever comes first, and so it writes its exit file or not.
    deterministic = {r for r in kinds(removals) if r[0] not in ("conmon", "exit file")}
    assert deterministic == {
        ("runtime container", f"runc {orphan_ctr}"),
        ("directory", str(dirs.state / "containers" / orphan_ctr)),
        ("attach link", str(dirs.attach / orphan_ctr)),
        ("cgroup", f"{cgroup_parent}/pod-{orphan_pod}"),
        ("cgroup", f"{owned_pod_cgroup}/{stray_conmon_cgroup}"),
        ("cgroup", f"{owned_pod_cgroup}/{stray_ctr_cgroup}"),
    }
    assert {r for r in kinds(removals) if r[0] == "conmon"} <= {
        ("conmon", f"pid {orphan.process.conmon_pid} (container {orphan_ctr})")
    }
    assert {r for r in kinds(removals) if r[0] == "exit file"} <= {("exit file", str(dirs.exits / orphan_ctr))}
    assert not process_running(orphan.process.conmon_pid)
    assert not process_running(orphan.process.container_pid)
    assert not os.path.lexists(dirs.exits / orphan_ctr)
    assert not cgroup_exists(f"{cgroup_parent}/pod-{orphan_pod}")

    for survivor in (kept, foreign):
        state = await runtime.state(survivor.request.container_id)
        assert state is not None and state.status == ContainerStatus.RUNNING
        assert process_running(survivor.process.conmon_pid)
    assert (dirs.state / "containers" / owned_ctr / "config.json").exists()
    assert os.path.lexists(dirs.attach / owned_ctr)
    assert cgroup_exists(f"{owned_pod_cgroup}/{owned_ctr}")
    assert cgroup_exists(f"{cgroup_parent}/not-pycris")
    assert cgroup_exists(f"{cgroup_parent}/foreign/{foreign_ctr}")

    for survivor in (kept, foreign):
        await runtime.delete(survivor.request.container_id, force=True)
        await wait_for_exit(survivor.process.conmon_pid, 10, kill_after=True)


async def test_a_conmon_whose_runtime_is_not_swept_is_killed(dirs: Dirs, tmp_path: Path, cgroup_parent: str) -> None:
    # Its handler was dropped from the config: no runtime in scope lists the container, so the
    # conmon outlives step 1 and is found by its command line alone.
    if not RUNC.exists() or not conmon.DEFAULT_CONMON_PATH.exists() or not Path("/bin/busybox").exists():
        pytest.skip("needs runc, conmon and busybox-static")
    dropped_handler = RuntimeHandler(name="dropped", path=RUNC, root=tmp_path / "dropped-root")
    dropped = container_runtime(dropped_handler, dirs.exits, dirs.attach)
    orphan_ctr = new_id()
    orphan = await run_container(dropped, orphan_ctr, tmp_path / "bundle", f"{cgroup_parent}/{orphan_ctr}")
    try:
        removals = await sweep_orphans(dirs.scope(), Owned(frozenset(), frozenset()), CgroupfsTree(), None, [])
        conmon_removal = ("conmon", f"pid {orphan.process.conmon_pid} (container {orphan_ctr})")
        assert conmon_removal in kinds(removals)
        assert not process_running(orphan.process.conmon_pid)
    finally:
        await dropped.delete(orphan_ctr, force=True)
        await wait_for_exit(orphan.process.conmon_pid, 10, kill_after=True)


def test_a_pid_that_is_no_longer_that_conmon_gets_no_signal(dirs: Dirs) -> None:
    # As after the conmon ended and its pid went to another process.
    other = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        assert not kill_conmon(other.pid, ConmonArgs(new_id(), str(dirs.exits)), 1.0)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    assert not kill_conmon(other.pid, ConmonArgs(new_id(), str(dirs.exits)), 1.0)


async def test_a_removal_that_fails_is_logged_and_the_sweep_goes_on(
    dirs: Dirs, cgroup_parent: str, caplog: pytest.LogCaptureFixture
) -> None:
    busy_pod, free_pod = sorted([new_id(), new_id()])  # the busy one is tried first
    busy, free = f"{cgroup_parent}/pod-{busy_pod}", f"{cgroup_parent}/pod-{free_pod}"
    make_cgroup(busy)
    make_cgroup(free)
    (dirs.exits / free_pod).write_text("0")
    sleeper = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        for directory in cgroup_dirs(busy):
            if (directory / "cpuset.cpus").exists():
                continue  # a new v1 cpuset takes no task before it has cpus and mems
            (directory / "cgroup.procs").write_text(str(sleeper.pid))
        caplog.set_level(logging.WARNING, logger="pycri.recovery.sweep")
        scope = dirs.scope(cgroup_parents=[cgroup_parent])
        removals = await sweep_orphans(scope, Owned(frozenset(), frozenset()), CgroupfsTree(), None, [])
    finally:
        sleeper.kill()
        sleeper.wait()

    assert kinds(removals) == {("exit file", str(dirs.exits / free_pod)), ("cgroup", free)}
    failed = [r for r in caplog.records if r.getMessage() == "orphan removal failed"]
    assert [(r.fields["kind"], r.fields["what"]) for r in failed] == [("cgroup", busy)]  # type: ignore[attr-defined]
    assert cgroup_exists(busy) and not cgroup_exists(free)


@pytest.fixture
def network(test_network: PrivateNetwork) -> CniManager:  # noqa: F811 - the imported fixture
    return CniManager(test_network.conf_dir, DEFAULT_BIN_DIRS, test_network.cache_dir)


@pytest.fixture
async def attached(dirs: Dirs, tmp_path: Path, network: CniManager) -> AsyncIterator[list[PodAttachment]]:
    """Pod attachments the test ADDs; whatever the sweep left is DELeted and unpinned after."""
    made: list[PodAttachment] = []
    yield made
    for attachment in made:
        await network.delete(attachment)
        remove_namespace(attachment.netns_path)
        remove_leftover_nat_rules(attachment.container_id)


async def attach(network: CniManager, made: list[PodAttachment], sandbox_id: str, netns: Path) -> str:
    create_namespace("net", netns)
    attachment = PodAttachment(sandbox_id, netns, f"pod-{sandbox_id[:8]}", "default", f"uid-{sandbox_id}")
    made.append(attachment)
    return (await network.add(attachment)).primary_ip


async def test_orphan_pods_cni_attachments_are_deleted_and_their_ips_released(
    dirs: Dirs,
    tmp_path: Path,
    network: CniManager,
    attached: list[PodAttachment],
    test_network: PrivateNetwork,  # noqa: F811 - the imported fixture
) -> None:
    owned_pod, cached_orphan, uncached_orphan, gone_orphan = new_id(), new_id(), new_id(), new_id()
    netns = {pod: dirs.state / "sandboxes" / pod / "netns" for pod in (owned_pod, cached_orphan, uncached_orphan)}
    owned_ip = await attach(network, attached, owned_pod, netns[owned_pod])
    await attach(network, attached, cached_orphan, netns[cached_orphan])
    # A crash between ADD and the cache write: the IP is held but no cache entry tells of it.
    await attach(network, attached, uncached_orphan, netns[uncached_orphan])
    for entry in network.cache.attachments(uncached_orphan):
        network.cache.remove(entry.network.name, uncached_orphan, entry.runtime.ifname)
    # A pod whose dirs are gone too: only the result cache still names it.
    await attach(network, attached, gone_orphan, tmp_path / "gone-netns")
    assert len(ip_files(test_network)) == 4

    owned = Owned(sandbox_ids=frozenset({owned_pod}), container_ids=frozenset())
    valid = [a for a in attached if a.container_id == owned_pod]
    removals = await sweep_orphans(dirs.scope(), owned, CgroupfsTree(), network, valid)

    assert kinds(removals) == {
        ("cni attachment", f"{cached_orphan} cni-loopback/lo, pycri/eth0"),
        ("cni attachment", f"{uncached_orphan} eth0 (not cached: DEL by the current network)"),
        ("cni attachment", f"{gone_orphan} cni-loopback/lo"),
        ("cni attachment", f"{gone_orphan} pycri/eth0"),
        ("netns", str(netns[cached_orphan])),
        ("netns", str(netns[uncached_orphan])),
        ("directory", str(dirs.state / "sandboxes" / cached_orphan)),
        ("directory", str(dirs.state / "sandboxes" / uncached_orphan)),
    }
    assert ip_files(test_network) == [owned_ip]
    remaining = sorted(path.name for path in (test_network.cache_dir / "results").iterdir())
    assert remaining == [f"cni-loopback-{owned_pod}-lo", f"pycri-{owned_pod}-eth0"]
    assert is_namespace_pinned(netns[owned_pod])

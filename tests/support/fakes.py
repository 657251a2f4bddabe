"""Fake host managers for service-level unit tests (no root): a runtime, cgroups, namespaces,
a network and an image store that record what the services ask of them.

They sit at the edge the services code against (ContainerRuntime, CgroupManager,
NamespaceManager, CniManager, the image store); everything above them is the real code.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pycri.calls import ObjectLocks
from pycri.cgroups import CgroupLayout, CgroupLimits
from pycri.config import Config
from pycri.container.context import ContainerContext
from pycri.container.service import ContainerService
from pycri.image.metadata import ImageRecord
from pycri.network.cni import CniManager, CniResult, PodAttachment
from pycri.network.cni_exec import CniError
from pycri.oci.conmon import ConmonProcess, ExitInfo
from pycri.oci.driver import ContainerCreate
from pycri.oci.runtime import ContainerState, ContainerStatus, OciRuntimeError, RuntimeHandler
from pycri.sandbox.context import SandboxContext
from pycri.sandbox.pause import PauseProcesses
from pycri.sandbox.service import SandboxService
from pycri.sandbox.sysctls import Sysctl
from pycri.state.intents import IntentLog
from pycri.state.memory import StateStore
from pycri.state.sandboxes import SandboxRecord
from pycri.state.store import Store

BUSYBOX = ImageRecord(
    id="sha256:" + "b" * 64,
    manifest_digest="sha256:" + "d" * 64,
    config={"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}},
    chain_ids=["sha256:" + "1" * 64],
    blobs=[],
    size=1,
    created_at=1,
    tags=["docker.io/library/busybox:latest"],
)


class FakeRuntime:
    """Each container is a real `sleep` child (so PIDs and start times are real); a kill ends it
    and makes conmon's exit report arrive through `on_exit`."""

    def __init__(self, root: Path, exit_dir: Path) -> None:
        self.handler = RuntimeHandler(name="runc", path=Path("/usr/sbin/runc"), root=root)
        self.exit_dir = exit_dir
        self.name = "runc"
        self.status: dict[str, ContainerStatus] = {}
        self.exits: dict[str, ExitInfo] = {}
        self.deleted: list[str] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.fail_create: str | None = None
        self.on_exit: Callable[[str], None] | None = None

    async def create(self, req: ContainerCreate) -> ConmonProcess:
        if self.fail_create:
            raise OciRuntimeError(f"runc create {req.container_id}: {self.fail_create}", self.fail_create)
        self.status[req.container_id] = ContainerStatus.CREATED
        process = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL)
        self.processes[req.container_id] = process
        return ConmonProcess(conmon_pid=process.pid, container_pid=process.pid)

    async def start(self, container_id: str) -> None:
        self.status[container_id] = ContainerStatus.RUNNING

    async def resume(self, container_id: str) -> None:
        if self.status.get(container_id) is not ContainerStatus.PAUSED:
            raise OciRuntimeError(f"runc resume {container_id}: container not paused", "not paused")
        self.status[container_id] = ContainerStatus.RUNNING

    async def kill(self, container_id: str, signal_number: int) -> None:
        if self.status.get(container_id) in (ContainerStatus.CREATED, ContainerStatus.RUNNING):
            self.exit(container_id, 128 + signal_number)

    def exit(self, container_id: str, code: int) -> None:
        self.status[container_id] = ContainerStatus.STOPPED
        process = self.processes.pop(container_id, None)
        if process is not None:
            process.kill()
            process.wait()
        self.exits[container_id] = ExitInfo(code=code, finished_at_ns=2_000_000_000_000_000_000, oom_killed=False)
        if self.on_exit is not None:
            self.on_exit(container_id)

    async def delete(self, container_id: str, force: bool = False) -> None:
        process = self.processes.pop(container_id, None)
        if process is not None:
            process.kill()
            process.wait()
        if self.status.pop(container_id, None) is not None:
            self.deleted.append(container_id)

    async def list_containers(self) -> list[ContainerState]:
        return [
            ContainerState(i, s, self.processes[i].pid if i in self.processes else 0, Path("/nonexistent"))
            for i, s in self.status.items()
        ]

    async def features(self) -> dict[str, Any]:
        return {}

    def read_exit(self, container_id: str, bundle: Path) -> ExitInfo | None:
        return self.exits.get(container_id)

    def remove_conmon_files(self, container_id: str) -> None:
        self.exits.pop(container_id, None)


@dataclass
class FakeCgroups:
    driver: str = "cgroupfs"
    parent: str = "/pycri"
    layout: CgroupLayout = field(default_factory=CgroupLayout)
    removed: list[str] = field(default_factory=list)
    limits: dict[str, CgroupLimits] = field(default_factory=dict)  # what set_limits gave each cgroup

    def check_parent(self, parent: str) -> None:
        if not parent.startswith("/"):
            raise ValueError(f"{parent!r} is not an absolute cgroup path")

    def pod_parent(self, kubelet_parent: str, sandbox_id: str) -> str:
        return kubelet_parent or f"/pycri/pod-{sandbox_id}"

    def owns_pod_parent(self, parent: str) -> bool:
        return parent.startswith("/pycri/pod-")

    def create_pod_parent(self, parent: str) -> None:
        pass

    def container_path(self, parent: str, leaf: str) -> str:
        return f"{parent}/{leaf}"

    def directory(self, cgroups_path: str) -> PurePosixPath:
        return PurePosixPath(cgroups_path.lstrip("/"))

    def place_conmon(self, parent: str, container_id: str, pid: int) -> None:
        pass

    def exists(self, cgroups_path: str) -> bool:
        return False

    def read_stats(self, cgroups_path: str) -> Any:
        raise FileNotFoundError(cgroups_path)

    def read_details(self, cgroups_path: str) -> Any:
        raise FileNotFoundError(cgroups_path)

    async def remove(self, cgroups_path: str) -> None:
        self.removed.append(cgroups_path)

    def children(self, parent: str) -> list[str]:
        return []

    def set_limits(self, cgroups_path: str, limits: CgroupLimits) -> list[str]:
        self.limits[cgroups_path] = limits
        return []


@dataclass
class FakeNamespaces:
    pinned: set[Path] = field(default_factory=set)

    def pin(self, record: SandboxRecord, hostname: str) -> None:
        for path in (record.netns_path, record.ipc_path, record.uts_path, record.shm_path):
            if path is not None:
                self.pinned.add(path)

    def apply_sysctls(self, record: SandboxRecord, sysctls: list[Sysctl]) -> None:
        pass

    def release(self, record: SandboxRecord) -> None:
        for path in (record.netns_path, record.ipc_path, record.uts_path, record.shm_path):
            self.pinned.discard(path)  # type: ignore[arg-type]

    def intact(self, record: SandboxRecord) -> bool:
        paths = [p for p in (record.netns_path, record.ipc_path, record.uts_path, record.shm_path) if p]
        return all(p in self.pinned for p in paths)

    def netns_pinned(self, path: Path) -> bool:
        return path in self.pinned


class FakeNetwork(CniManager):
    """CNI without plugins: ADD hands out 10.88.0.N, DEL gives it back."""

    def __init__(self, base: Path) -> None:
        super().__init__(base / "net.d", [], base / "cni-cache")
        self.attached: dict[str, str] = {}
        self.fail_add: str | None = None
        self.add_gate: asyncio.Event | None = None
        self._next = 2

    async def add(self, attachment: PodAttachment) -> CniResult:
        if self.add_gate is not None:
            await self.add_gate.wait()
        if self.fail_add:
            raise CniError("bridge", "ADD", self.fail_add)
        ip = f"10.88.0.{self._next}"
        self._next += 1
        self.attached[attachment.container_id] = ip
        return CniResult(ips=(ip,), interfaces=(), raw={"cniVersion": "1.0.0"})

    async def delete(self, attachment: PodAttachment) -> None:
        self.attached.pop(attachment.container_id, None)

    async def gc(self, valid_attachments: Any) -> None:
        pass


class FakeMetadata:
    def __init__(self) -> None:
        self.leases: dict[str, list[str]] = {}

    def get(self, image_id: str) -> ImageRecord | None:
        return BUSYBOX if image_id == BUSYBOX.id else None

    async def lease_snapshots(self, owner: str, chain_ids: list[str]) -> None:
        self.leases.setdefault(owner, []).extend(chain_ids)

    async def release_snapshots(self, owner: str) -> None:
        self.leases.pop(owner, None)

    async def release_snapshots_of_all_but(self, owners: Collection[str]) -> int:
        stale = [owner for owner in self.leases if owner not in owners]
        for owner in stale:
            del self.leases[owner]
        return len(stale)


class FakeSnapshots:
    def mount_rootfs(self, lowers: list[str], upper: Path | None, work: Path | None, target: Path, *_: Any) -> None:
        target.mkdir(parents=True, exist_ok=True)


class FakeImages:
    def __init__(self) -> None:
        self.metadata = FakeMetadata()
        self.snapshots = FakeSnapshots()

    async def lookup(self, reference: str) -> ImageRecord | None:
        return BUSYBOX if reference in ("busybox", *BUSYBOX.tags, BUSYBOX.id) else None

    async def pull(self, reference: str) -> str:
        return BUSYBOX.id

    async def recover(self, intents: Any) -> None:
        pass


@dataclass
class FakeHost:
    """The machine under the services: what survives a daemon restart."""

    runtime: FakeRuntime
    cgroups: FakeCgroups
    namespaces: FakeNamespaces
    network: FakeNetwork
    images: FakeImages


@dataclass
class FakeNode:
    config: Config
    db: Store
    state: StateStore
    intents: IntentLog
    host: FakeHost
    containers: ContainerService
    sandboxes: SandboxService

    @property
    def runtime(self) -> FakeRuntime:
        return self.host.runtime

    @property
    def cgroups(self) -> FakeCgroups:
        return self.host.cgroups

    @property
    def namespaces(self) -> FakeNamespaces:
        return self.host.namespaces

    @property
    def network(self) -> FakeNetwork:
        return self.host.network

    @property
    def images(self) -> FakeImages:
        return self.host.images

    def rows(self, table: str) -> int:
        return int(self.db.query(f"SELECT count(*) FROM {table}")[0][0])


def build(base: Path, host: FakeHost | None = None) -> FakeNode:
    """Services over fakes, on a database and dirs under `base`; pass the host of an earlier
    node (after closing its database) to start again as after a crash."""
    config = Config(root_dir=base / "root", state_dir=base / "state")
    config.runtime.default_log_dir = base / "logs"
    config.root_dir.mkdir(exist_ok=True)
    host = host or FakeHost(
        FakeRuntime(config.state_dir / "runc", config.state_dir / "exits"),
        FakeCgroups(),
        FakeNamespaces(),
        FakeNetwork(base),
        FakeImages(),
    )
    db = Store(config.db_path)
    state = StateStore(db, config.root_dir / "sandboxes", config.state_dir / "sandboxes")
    intents = IntentLog(db)
    locks = ObjectLocks()
    runtimes: Any = {"runc": host.runtime}
    images: Any = host.images
    cgroups: Any = host.cgroups
    containers = ContainerService(ContainerContext(config, state, intents, images, runtimes, cgroups, 0), locks)
    pause = PauseProcesses(config, images, runtimes, cgroups, 0)
    sandboxes = SandboxService(
        SandboxContext(config, state, intents, host.network, host.namespaces, pause, cgroups), containers, locks
    )
    host.runtime.on_exit = containers.exit_reported
    return FakeNode(config, db, state, intents, host, containers, sandboxes)

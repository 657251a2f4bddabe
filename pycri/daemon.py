"""The daemon's long-lived parts: config, store, host managers, services, and the lock
that keeps two pycri processes off one root dir."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pycri import __version__
from pycri.api import api_pb2
from pycri.calls import ObjectLocks
from pycri.cgroups import CgroupManager, make_cgroup_manager
from pycri.config import Config, HandlerConfig
from pycri.container.context import ContainerContext
from pycri.container.service import ContainerService
from pycri.errors import InvalidArgument
from pycri.hostinfo import HostInfo, collect_host_info, is_executable
from pycri.image.service import ImageService
from pycri.network.cni import CniManager, parse_pod_cidrs
from pycri.network.cni_config import installed_default_config
from pycri.nri.hooks import Nri
from pycri.oci.apparmor import APPARMOR_PARSER, load_default_profile
from pycri.oci.driver import ContainerRuntime, RuntimeTimeouts
from pycri.oci.runtime import RuntimeHandler
from pycri.recovery.start import recover
from pycri.sandbox.context import SandboxContext
from pycri.sandbox.namespaces import HostNamespaces
from pycri.sandbox.pause import PauseProcesses
from pycri.sandbox.service import SandboxService
from pycri.state.intents import IntentLog
from pycri.state.memory import StateStore
from pycri.state.store import Store, make_private_dir
from pycri.stream.service import StreamService
from pycri.userns.layout import open_for_pod_roots
from pycri.userns.mounts import idmap_problem

log = logging.getLogger(__name__)


async def _handler_features(
    runtime: ContainerRuntime, handler: HandlerConfig, idmap_ready: bool
) -> api_pb2.RuntimeHandlerFeatures:
    """What a runtime handler can do, read from `<runtime> features` (nothing when it is missing).
    User namespaces need the runtime to join one and the snapshots' file system to take the
    ID-mapped mounts pycri makes itself (`idmap_ready`)."""
    features = await runtime.features() or {} if is_executable(handler.path) else {}
    namespaces = (features.get("linux") or {}).get("namespaces") or []
    return api_pb2.RuntimeHandlerFeatures(
        recursive_read_only_mounts="rro" in (features.get("mountOptions") or []),
        user_namespaces=idmap_ready and "user" in namespaces,
    )


class AlreadyRunning(RuntimeError):
    """Another pycri holds the root dir."""


def _lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(f"another pycri (pid {holder}) is using {path.parent}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def container_runtimes(config: Config) -> dict[str, ContainerRuntime]:
    """One driver per configured runtime handler."""
    timeouts = RuntimeTimeouts(call=config.timeouts.runtime, conmon_create=config.timeouts.conmon_create)
    return {
        name: ContainerRuntime(
            RuntimeHandler(
                name=name,
                path=handler.path,
                root=config.handler_root(name),
                systemd_cgroup=config.runtime.cgroup_driver == "systemd",
            ),
            conmon=config.runtime.conmon,
            exit_dir=config.state_dir / "exits",
            socket_dir=config.state_dir / "attach",
            timeouts=timeouts,
            log_size_max=config.runtime.log_size_max,
        )
        for name, handler in config.runtime.handlers.items()
    }


@dataclass
class Daemon:
    config: Config
    store: Store
    state: StateStore
    intents: IntentLog
    cgroups: CgroupManager
    network: CniManager
    images: ImageService
    containers: ContainerService
    sandboxes: SandboxService
    streams: StreamService
    locks: ObjectLocks
    # What each runtime handler can do, read from `<runtime> features` at start.
    handler_features: dict[str, api_pb2.RuntimeHandlerFeatures] = field(default_factory=dict)
    # What RuntimeDefault means for AppArmor on this host, for the runtime status.
    apparmor: str = ""
    # Why the snapshots cannot be ID-mapped here (then no handler offers user namespaces); None: they can.
    idmap_problem: str | None = None
    # One driver per runtime handler, shared with the container and pause services (a reload adds to it).
    runtimes: dict[str, ContainerRuntime] = field(default_factory=dict)
    _lock_fd: int = -1
    _host_info: HostInfo | None = field(default=None, repr=False)

    @classmethod
    def open(cls, config: Config) -> Daemon:
        for directory in (config.root_dir, config.state_dir):
            make_private_dir(directory)
        lock_fd = _lock(config.root_dir / "pycri.lock")
        try:
            store = Store(config.db_path)
        except BaseException:
            os.close(lock_fd)
            raise
        own_oom_score_adj = int(Path("/proc/self/oom_score_adj").read_text())
        state = StateStore(store, config.root_dir / "sandboxes", config.state_dir / "sandboxes")
        intents = IntentLog(store)
        nri = Nri(config, state, __version__, own_oom_score_adj)
        locks = ObjectLocks()
        cgroups = make_cgroup_manager(
            config.runtime.cgroup_driver, config.runtime.cgroup_parent, config.runtime.conmon_cgroup
        )
        runtimes = container_runtimes(config)
        network = CniManager(
            config.cni.conf_dir, config.cni.bin_dirs, config.root_dir / "cni", plugin_timeout=config.timeouts.cni
        )
        images = ImageService(config, store)
        containers = ContainerService(
            ContainerContext(config, state, intents, images, runtimes, cgroups, own_oom_score_adj, nri), locks
        )
        pause = PauseProcesses(config, images, runtimes, cgroups, own_oom_score_adj)
        sandboxes = SandboxService(
            SandboxContext(config, state, intents, network, HostNamespaces(), pause, cgroups, nri), containers, locks
        )
        nri.attach(containers)
        streams = StreamService(config, containers, sandboxes)
        return cls(
            config, store, state, intents, cgroups, network, images, containers, sandboxes, streams, locks,
            runtimes=runtimes, _lock_fd=lock_fd,
        )  # fmt: skip

    async def start(self) -> None:
        """Recover, then bring the services up; runs before the socket accepts calls."""
        for directory in ("exits", "attach", "containers", "sandboxes"):
            make_private_dir(self.config.state_dir / directory)
        for directory in ("containers", "sandboxes"):
            make_private_dir(self.config.root_dir / directory)
        if self.config.cni.install_default_config:
            installed_default_config(self.config.cni.conf_dir, self.config.cni.default_subnet)
        await self.images.start()
        await recover(self.containers, self.sandboxes, self.intents, self.images.recover)
        self.apparmor = await load_default_profile(APPARMOR_PARSER, self.config.timeouts.runtime)
        root = self.config.root_dir
        self.idmap_problem = await asyncio.to_thread(idmap_problem, root / "snapshots", root / "containers")
        if self.idmap_problem is not None:
            log.warning("no user namespaces for pods", extra={"fields": {"reason": self.idmap_problem}})
        for name, runtime in self.runtimes.items():
            handler = self.config.runtime.handlers[name]
            self.handler_features[name] = await _handler_features(runtime, handler, self.idmap_problem is None)
        await self._open_for_pod_roots()
        await self.containers.ctx.nri.start()  # plugins synchronize with the recovered pods and containers
        await self.streams.start()

    async def reconfigure(self, config: Config) -> None:
        """Run with `config` from now on: a reloaded config whose keys that need a restart still hold
        the running values (pycri/reload.py makes it). New runtime handlers get their drivers; every
        component that reads the config gets the new one, none is changed in place."""
        added = {name: runtime for name, runtime in container_runtimes(config).items() if name not in self.runtimes}
        features = {
            name: await _handler_features(rt, config.runtime.handlers[name], self.idmap_problem is None)
            for name, rt in added.items()
        }
        self.images.reconfigure(config)
        self.runtimes.update(added)
        self.handler_features.update(features)
        if features:
            await self._open_for_pod_roots()
        self.containers.ctx.config = config
        self.sandboxes.ctx.config = config
        self.sandboxes.ctx.pause.reconfigure(config)
        self.config = config
        self._host_info = None

    async def _open_for_pod_roots(self) -> None:
        """Where a handler offers user namespaces, the pods' roots must walk to their rootfs: the root
        dir and the user-namespace subtree become search-only for others (pycri.userns.layout)."""
        if any(features.user_namespaces for features in self.handler_features.values()):
            await asyncio.to_thread(open_for_pod_roots, self.config.root_dir)

    def host_info(self) -> HostInfo:
        """Versions of the host's binaries, read once (they only change with a package upgrade)."""
        if self._host_info is None:
            self._host_info = collect_host_info(self.config)
        return self._host_info

    async def set_pod_cidr(self, cidr: str) -> None:
        try:
            parse_pod_cidrs(cidr)
        except ValueError as exc:
            raise InvalidArgument(f"runtime_config.network_config.pod_cidr: {cidr!r}: {exc}") from None
        if cidr != self.network.pod_cidr:
            self.network.pod_cidr = cidr

    async def close(self) -> None:
        await self.locks.drain()
        await self.containers.ctx.nri.stop()
        self.containers.close()
        await self.images.close()
        self.store.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

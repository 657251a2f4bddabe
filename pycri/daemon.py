"""The daemon's long-lived parts: config, metadata store, services, and the locks
that keep two pycri processes off one root dir or socket."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pycri.api import api_pb2
from pycri.config import Config
from pycri.container.service import ContainerService
from pycri.hostinfo import HostInfo, collect_host_info, is_executable
from pycri.image.service import ImageService
from pycri.network.cni import CniManager
from pycri.network.cni_config import installed_default_config
from pycri.sandbox.metadata import SandboxRecord
from pycri.sandbox.service import SandboxService
from pycri.state.store import Store
from pycri.stream.service import StreamService

log = logging.getLogger(__name__)


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


@dataclass
class Daemon:
    config: Config
    store: Store
    network: CniManager
    images: ImageService
    sandboxes: SandboxService
    containers: ContainerService
    streams: StreamService
    # What each runtime handler can do, read from `<runtime> features` at start.
    handler_features: dict[str, api_pb2.RuntimeHandlerFeatures] = field(default_factory=dict)
    _lock_fd: int = -1
    _host_info: HostInfo | None = field(default=None, repr=False)

    @classmethod
    def open(cls, config: Config) -> Daemon:
        for directory in (config.root_dir, config.state_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        lock_fd = _lock(config.root_dir / "pycri.lock")
        try:
            store = Store(config.db_path)
        except BaseException:
            os.close(lock_fd)
            raise
        network = CniManager(config.cni.conf_dir, config.cni.bin_dirs, config.root_dir / "cni")
        images = ImageService(config, store)
        sandboxes = SandboxService(config, store, network, images)
        containers = ContainerService(config, store, images, sandboxes)
        streams = StreamService(config, containers, sandboxes)
        daemon = cls(config, store, network, images, sandboxes, containers, streams, _lock_fd=lock_fd)
        sandboxes.add_stop_hook(daemon._stop_pod_containers)
        sandboxes.add_remove_hook(daemon._remove_pod_containers)
        return daemon

    async def start(self) -> None:
        """Bring the services up; runs before the socket accepts calls."""
        if self.config.cni.install_default_config:
            installed_default_config(self.config.cni.conf_dir, self.config.cni.default_subnet)
        await self.images.start()
        await self.sandboxes.reconcile()
        await self.containers.load()
        for name, handler in self.config.runtime.handlers.items():
            features = await self.containers.runtime(name).features() or {} if is_executable(handler.path) else {}
            self.handler_features[name] = api_pb2.RuntimeHandlerFeatures(
                recursive_read_only_mounts="rro" in (features.get("mountOptions") or []),
                user_namespaces=False,  # the spec generator refuses user namespaces for now
            )
        await self.streams.start()

    async def _stop_pod_containers(self, sandbox: SandboxRecord) -> None:
        """StopPodSandbox ends every container of the pod at once, as CRI asks."""
        for container in self.containers.in_sandbox(sandbox.id):
            await self.containers.stop(container.id, timeout=0)

    async def _remove_pod_containers(self, sandbox: SandboxRecord) -> None:
        for container in self.containers.in_sandbox(sandbox.id):
            await self.containers.remove(container.id)

    def host_info(self) -> HostInfo:
        """Versions of the host's binaries, read once (they only change with a package upgrade)."""
        if self._host_info is None:
            self._host_info = collect_host_info(self.config)
        return self._host_info

    async def set_pod_cidr(self, cidr: str) -> None:
        if cidr != self.network.pod_cidr:
            self.network.pod_cidr = cidr

    async def close(self) -> None:
        self.containers.close()
        await self.images.close()
        self.store.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

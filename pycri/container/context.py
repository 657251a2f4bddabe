"""What every container operation works with, and the teardown they share.

The teardown undoes everything CreateContainer makes, each step idempotent, so one
function serves a failed create, RemoveContainer, and recovery of an operation a crash
cut short (from the record its intent holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pycri.api import api_pb2
from pycri.cgroups import CgroupManager
from pycri.config import Config
from pycri.container.checkpoint_criu import Criu
from pycri.container.image_mounts import unmount_image_volumes
from pycri.image import overlay
from pycri.image.service import ImageService
from pycri.nri.hooks import Nri
from pycri.oci.driver import ContainerRuntime
from pycri.state.containers import ContainerRecord
from pycri.state.intents import IntentLog
from pycri.state.memory import StateStore
from pycri.userns.layout import container_layers
from pycri.userns.mappings import in_pod_user_namespace
from pycri.userns.mounts import unstage_idmapped_binds

log = logging.getLogger(__name__)


def sandbox_lock_key(sandbox_id: str) -> str:
    """Container creation and the pod's stop and removal share this lock."""
    return f"sandbox/{sandbox_id}"


@dataclass
class ContainerContext:
    config: Config
    state: StateStore
    intents: IntentLog
    images: ImageService
    runtimes: Mapping[str, ContainerRuntime]
    cgroups: CgroupManager
    own_oom_score_adj: int
    nri: Nri = field(default_factory=Nri)
    criu: Criu = field(default_factory=Criu)  # asked on the first checkpoint or restore

    def runtime(self, handler: str) -> ContainerRuntime:
        return self.runtimes[handler]

    def layer_dir(self, container_id: str, config: api_pb2.ContainerConfig) -> Path:
        """The rootfs mount, its upper and work dirs, image volume mounts (under the root dir; for
        a container in its pod's user namespace, in the subtree the pod's root may walk)."""
        if in_pod_user_namespace(config):
            return container_layers(self.config.root_dir, container_id)
        return self.config.root_dir / "containers" / container_id

    def bundle_dir(self, container_id: str) -> Path:
        """config.json and conmon's files (under the state dir)."""
        return self.config.state_dir / "containers" / container_id

    async def teardown(self, record: ContainerRecord, made_bind_sources: tuple[Path, ...] = ()) -> None:
        """Remove the runtime's container, its cgroups, mounts, dirs and lease; what is gone is skipped."""
        await self.runtime(record.runtime_handler).delete(record.id, force=True)
        await self.remove_host_side(record, made_bind_sources)

    async def remove_host_side(self, record: ContainerRecord, made_bind_sources: tuple[Path, ...] = ()) -> None:
        """The teardown once the runtime's container is deleted: cgroups, mounts, dirs and lease."""
        runtime = self.runtime(record.runtime_handler)
        with contextlib.suppress(FileNotFoundError):
            await self.cgroups.remove(record.cgroups_path)
        await asyncio.to_thread(self._remove_files, record, runtime, made_bind_sources)
        await self.images.metadata.release_snapshots(record.id)

    def _remove_files(
        self, record: ContainerRecord, runtime: ContainerRuntime, made_bind_sources: tuple[Path, ...]
    ) -> None:
        layers = self.layer_dir(record.id, record.config)
        unstage_idmapped_binds(layers)
        unmount_image_volumes(layers)
        overlay.unmount(layers / "rootfs")
        shutil.rmtree(layers, ignore_errors=True)
        shutil.rmtree(self.bundle_dir(record.id), ignore_errors=True)
        runtime.remove_conmon_files(record.id)
        for made in reversed(made_bind_sources):  # deepest first
            with contextlib.suppress(OSError):  # in use or no longer empty: it stays
                info = made.lstat()
                if stat.S_ISDIR(info.st_mode):
                    made.rmdir()
                elif stat.S_ISREG(info.st_mode) and info.st_size == 0:  # a file source (restores)
                    made.unlink()

"""The pause process: PID 1 of the PID namespace a pod's containers share.

Only pods with namespace_options.pid POD get one; every other namespace is pinned
without a process. It is the configured pause image run like a container (the pod's
ContainerRuntime, under conmon) with a read-only rootfs, joining the pod's pinned net,
IPC and UTS namespaces and making the new PID namespace. Its runtime container id is
the sandbox id; its bundle (config.json, conmon's files, the rootfs mount and its upper
dir) is <state>/sandboxes/<id>/pause, but in a pod with a user namespace of its own the
rootfs, upper and work dirs are <root>/userns/sandboxes/<id>, where the pod's root may
walk; a snapshot lease owned by the sandbox id keeps
the image's layers while it runs. It is known by PID and start time, so a PID reused
after a crash or reboot is never taken for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

from pycri.cgroups import CgroupManager
from pycri.config import Config
from pycri.container.rootfs import make_layer_dirs, mount_leased, write_bundle
from pycri.errors import FailedPrecondition
from pycri.image import overlay
from pycri.image.service import ImageService
from pycri.oci.driver import ContainerCreate, ContainerRuntime, runtime_error
from pycri.oci.runtime import OciRuntimeError
from pycri.oci.spec import PauseSpecInput, pause_spec
from pycri.proc import ProcessRef
from pycri.sandbox.paths import sandbox_paths
from pycri.state.sandboxes import SandboxRecord
from pycri.userns.layout import hand_to_pod_root, pause_layers

log = logging.getLogger(__name__)

KILL_WAIT_SECONDS = 30.0


def pause_bundle(record: SandboxRecord) -> Path:
    return record.state_dir / "pause"


def pause_process(record: SandboxRecord) -> ProcessRef | None:
    if record.pause_pid is None or record.pause_start_time is None:
        return None
    return ProcessRef(record.pause_pid, record.pause_start_time)


class PauseProcesses:
    def __init__(
        self,
        config: Config,
        images: ImageService,
        runtimes: Mapping[str, ContainerRuntime],
        cgroups: CgroupManager,
        own_oom_score_adj: int,
    ) -> None:
        self._config = config
        self._images = images
        self._runtimes = runtimes
        self._cgroups = cgroups
        self._own_oom_score_adj = own_oom_score_adj

    def _layers(self, record: SandboxRecord) -> Path:
        """Its rootfs, upper and work dirs: in the bundle, or for a pod with a user namespace of its
        own where the pod's root may walk (pycri.userns.layout)."""
        if record.user_namespace is None:
            return pause_bundle(record)
        return pause_layers(self._config.root_dir, record.id)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (handlers' allowed annotations) for the pause processes started from now on."""
        self._config = config

    async def _image_id(self) -> str:
        reference = self._config.runtime.pause_image
        image = await self._images.lookup(reference)
        return image.id if image is not None else await self._images.pull(reference)

    async def start(self, record: SandboxRecord) -> ProcessRef:
        """Run the pod's pause process. A failure leaves what was made for stop()."""
        image = self._images.metadata.get(await self._image_id())
        if image is None:
            raise FailedPrecondition(f"pause image {self._config.runtime.pause_image} vanished while in use")
        bundle, layers = pause_bundle(record), self._layers(record)
        await asyncio.to_thread(make_layer_dirs, layers)
        if record.user_namespace is not None:
            await asyncio.to_thread(hand_to_pod_root, record.user_namespace, layers)
        # Writable underneath, as containerd's sandbox snapshot: runc makes its mount points
        # (/proc, /dev, ...) in the rootfs before the spec's read-only root takes effect.
        await mount_leased(self._images, record.id, image.chain_ids, layers / "rootfs", layers, record.userns_path)
        spec_input = PauseSpecInput(
            sandbox_id=record.id,
            sandbox=record.config,
            image_config=image.config,
            rootfs=layers / "rootfs",
            sandbox_paths=sandbox_paths(record),
            cgroups_path=self._cgroups.container_path(record.cgroup_parent, record.id),
            runtime_oom_score_adj=self._own_oom_score_adj,
            seccomp_profile_root=None,
            allowed_annotations=tuple(self._config.handler(record.runtime_handler).allowed_annotations),
        )
        spec = await asyncio.to_thread(pause_spec, spec_input)
        await asyncio.to_thread(write_bundle, bundle, spec)
        runtime = self._runtimes[record.runtime_handler]
        try:
            created = await runtime.create(
                ContainerCreate(
                    container_id=record.id,
                    name=f"{record.name}_pause",
                    bundle=bundle,
                    log_path=bundle / "pause.log",
                    place_conmon=functools.partial(self._cgroups.place_conmon, record.cgroup_parent, record.id),
                )
            )
            await runtime.start(record.id)
        except OciRuntimeError as exc:
            raise runtime_error(exc, "the pod's pause process did not start", FailedPrecondition) from exc
        process = ProcessRef.of(created.container_pid)
        if process is None:
            raise FailedPrecondition("the pod's pause process exited as soon as it started")
        log.info("pause process started", extra={"fields": {"id": record.id, "pid": process.pid}})
        return process

    async def stop(self, record: SandboxRecord) -> None:
        """Kill the pause process (and with it whatever is left in its PID namespace) and
        remove it, its rootfs and lease; doing it again, or on a half-made one, is fine."""
        runtime = self._runtimes[record.runtime_handler]
        process = pause_process(record)
        if process is not None and process.alive():
            try:
                await runtime.kill(record.id, signal.SIGKILL)
            except OciRuntimeError as exc:  # gone already, the wait returns at once; if not, it times out
                log.warning("kill of the pause process failed", extra={"fields": {"id": record.id, "error": str(exc)}})
            await process.wait_exit(KILL_WAIT_SECONDS)
        await runtime.delete(record.id, force=True)
        await asyncio.to_thread(self._remove_files, record, runtime)
        await self._images.metadata.release_snapshots(record.id)
        log.info("pause process removed", extra={"fields": {"id": record.id}})

    def _remove_files(self, record: SandboxRecord, runtime: ContainerRuntime) -> None:
        layers = self._layers(record)
        runtime.remove_conmon_files(record.id)
        overlay.unmount(layers / "rootfs")
        shutil.rmtree(layers, ignore_errors=True)
        shutil.rmtree(pause_bundle(record), ignore_errors=True)

"""The pause process: PID 1 of the PID namespace a pod's containers share.

Only pods with namespace_options.pid POD get one; every other namespace is pinned
without a process. It is the configured pause image run like a container (conmon and
the pod's OCI runtime) with a read-only rootfs, joining the pod's pinned net, IPC and
UTS namespaces and making the new PID namespace. Its runtime container id is the
sandbox id; its bundle (config.json, conmon's files, the rootfs mount and its upper
dir) is <state>/sandboxes/<id>/pause; a snapshot lease owned by the sandbox id keeps
the image's layers while it runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
from pathlib import Path

from pycri.config import Config
from pycri.errors import FailedPrecondition
from pycri.image import overlay
from pycri.image.service import ImageService
from pycri.oci import conmon
from pycri.oci.runtime import OciRuntimeError
from pycri.oci.spec import PauseSpecInput, pause_spec
from pycri.runtimes import cgroups_path, oci_runtime
from pycri.sandbox.metadata import SandboxRecord
from pycri.undo import UndoStack

log = logging.getLogger(__name__)

KILL_WAIT_SECONDS = 30.0


def pause_bundle(record: SandboxRecord) -> Path:
    return record.state_dir / "pause"


class PauseProcesses:
    def __init__(self, config: Config, images: ImageService) -> None:
        self._config = config
        self._images = images
        # Shared with the container service: conmon names both files by container id.
        self._exit_dir = config.state_dir / "exits"
        self._socket_dir = config.state_dir / "attach"
        self._own_oom_score_adj = int(Path("/proc/self/oom_score_adj").read_text())

    async def _image_id(self) -> str:
        reference = self._config.runtime.pause_image
        image = await asyncio.to_thread(self._images.find, reference)
        return image.id if image is not None else await self._images.pull(reference)

    async def start(self, record: SandboxRecord, undo: UndoStack) -> int:
        """Run the pod's pause process; returns its PID (on the host). Each step pushes its undo."""
        image = self._images.metadata.get(await self._image_id())
        if image is None:
            raise FailedPrecondition(f"pause image {self._config.runtime.pause_image} vanished while in use")
        bundle = pause_bundle(record)
        rootfs = bundle / "rootfs"
        await asyncio.to_thread(self._images.metadata.lease, record.id, image.chain_ids)
        undo.push("release the pause image's snapshots", lambda: self._images.metadata.release(record.id))
        await asyncio.to_thread(_make_dirs, bundle, ("rootfs", "upper", "work"))
        undo.push("remove the pause bundle", lambda: shutil.rmtree(bundle, ignore_errors=True))
        # Writable underneath, as containerd's sandbox snapshot: runc makes its mount points
        # (/proc, /dev, ...) in the rootfs before the spec's read-only root takes effect.
        lowers = list(reversed(image.chain_ids))
        await asyncio.to_thread(self._images.snapshots.mount_rootfs, lowers, bundle / "upper", bundle / "work", rootfs)
        undo.push("unmount the pause rootfs", lambda: overlay.unmount(rootfs))
        spec_input = PauseSpecInput(
            sandbox_id=record.id,
            sandbox=record.config,
            image_config=image.config,
            rootfs=rootfs,
            sandbox_paths=record.sandbox_paths(),
            cgroups_path=cgroups_path(self._config, record.cgroup_parent, record.id),
            runtime_oom_score_adj=self._own_oom_score_adj,
            seccomp_profile_root=None,
        )
        spec = await asyncio.to_thread(pause_spec, spec_input)
        await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
        runtime = oci_runtime(self._config, record.runtime_handler)
        try:
            process = await conmon.create_container(
                conmon.ConmonCreate(
                    container_id=record.id,
                    name=f"{record.name}_pause",
                    bundle=bundle,
                    runtime=runtime.handler,
                    log_path=bundle / "pause.log",
                    exit_dir=self._exit_dir,
                    persist_dir=bundle,
                    socket_dir=self._socket_dir,
                    conmon_path=self._config.runtime.conmon,
                )
            )
            undo.push_async("delete the pause container", lambda: runtime.delete(record.id, force=True))
            undo.push(
                "remove conmon's files", lambda: conmon.remove_conmon_files(self._exit_dir, self._socket_dir, record.id)
            )
            await runtime.start(record.id)
        except OciRuntimeError as exc:
            raise FailedPrecondition(f"the pod's pause process did not start: {exc}") from exc
        log.info("pause process started", extra={"fields": {"id": record.id, "pid": process.container_pid}})
        return process.container_pid

    def exited(self, record: SandboxRecord) -> bool:
        """Whether the pod's pause process has ended (conmon wrote its exit file)."""
        return (self._exit_dir / record.id).exists()

    async def stop(self, record: SandboxRecord) -> None:
        """Kill the pause process (and with it whatever is left in its PID namespace) and
        remove it, its rootfs and lease; doing it again is fine."""
        runtime = oci_runtime(self._config, record.runtime_handler)
        if record.pause_pid is not None and not self.exited(record):
            try:
                await runtime.kill(record.id, signal.SIGKILL)
            except OciRuntimeError as exc:  # already gone: the wait below returns at once
                log.debug("kill of the pause process failed", extra={"fields": {"id": record.id, "error": str(exc)}})
            await conmon.wait_for_exit(record.pause_pid, KILL_WAIT_SECONDS)
        await runtime.delete(record.id, force=True)
        await asyncio.to_thread(self._remove_files, record)
        log.info("pause process removed", extra={"fields": {"id": record.id}})

    def _remove_files(self, record: SandboxRecord) -> None:
        bundle = pause_bundle(record)
        conmon.remove_conmon_files(self._exit_dir, self._socket_dir, record.id)
        overlay.unmount(bundle / "rootfs")
        shutil.rmtree(bundle, ignore_errors=True)
        self._images.metadata.release(record.id)


def _make_dirs(parent: Path, names: tuple[str, ...]) -> None:
    parent.mkdir(mode=0o700)
    for name in names:
        (parent / name).mkdir()

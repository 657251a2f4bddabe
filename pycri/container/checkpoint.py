"""CheckpointContainer: CRIU's images of a running container, its rootfs changes, spec and log,
written as the checkpoint archive CRI-O and containerd write (checkpoint_archive.py).

As both of them do for Kubernetes' forensic checkpoints, the container goes on running: it is
paused (frozen) while CRIU dumps it and its rootfs changes are read, then resumed. CRIU must
be usable on the host (checkpoint_criu.py); where it is not, the call fails with
FAILED_PRECONDITION and CRIU's reason. A container in its pod's user namespace is refused
(FAILED_PRECONDITION) before CRIU is asked: its rootfs changes are owned by host IDs, and
nothing would map them back into another pod's range on restore.

The call's intent names the staging dir and the partial archive. Should pycri die on the way,
recovery resumes the container (pycri never leaves one paused: recovery/start.py resumes any
runc reports paused) and removes both files (discard_interrupted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from pycri.calls import ObjectLocks
from pycri.container.checkpoint_archive import (
    CHECKPOINT_DIR,
    CONTAINER_LOG,
    CheckpointConfig,
    partial_archive,
    rootfs_changes,
    write_archive,
    write_metadata,
    write_rootfs_diff,
)
from pycri.container.context import ContainerContext
from pycri.container.views import container_status
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.faults import kill_point
from pycri.oci.driver import runtime_error
from pycri.oci.runtime import OciRuntimeError
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.intents import Intent
from pycri.userns.mappings import in_pod_user_namespace

log = logging.getLogger(__name__)

INTENT = "checkpoint_container"


@dataclass(frozen=True)
class CheckpointFiles:
    """What a checkpoint writes before its archive is in place; its intent names them."""

    staging: Path  # CRIU's images and the other members, under the container's layer dir
    partial: Path  # the archive before its rename, beside the target

    def to_plan(self) -> dict[str, str]:
        return {"staging": str(self.staging), "partial": str(self.partial)}

    @classmethod
    def from_plan(cls, plan: dict[str, str]) -> CheckpointFiles:
        return cls(Path(plan["staging"]), Path(plan["partial"]))

    def remove(self) -> None:
        """Both, whichever exist (a blocking call)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.partial.unlink(missing_ok=True)


def checked_location(location: str) -> Path:
    """The archive path: absolute, in a directory that exists."""
    if not location:
        raise InvalidArgument("location: empty; name the archive file to write")
    if "\0" in location or not location.startswith("/"):
        raise InvalidArgument(f"location: {location!r} is not an absolute path")
    path = Path(location)
    if not path.parent.is_dir():
        raise InvalidArgument(f"location: {str(path.parent)!r} is not an existing directory")
    if path.is_dir():
        raise InvalidArgument(f"location: {location!r} is a directory")
    return path


async def checkpoint_container(
    ctx: ContainerContext, locks: ObjectLocks, record: ContainerRecord, location: str, timeout: int
) -> None:
    """Write the archive of the running container `record` to `location`; the container runs on.
    `timeout` seconds bound CRIU's dump (0: the runtime call timeout)."""
    if timeout < 0:
        raise InvalidArgument(f"timeout: {timeout} is negative")
    path = checked_location(location)
    if in_pod_user_namespace(record.config):
        raise FailedPrecondition(
            f"checkpoint container {record.id}: it runs in its pod's user namespace, and pycri cannot "
            "checkpoint such a container yet (its rootfs changes hold host IDs that a restore would not map back)"
        )
    await ctx.criu.require(f"checkpoint container {record.id}")
    await locks.run(record.id, lambda: _checkpoint(ctx, record.id, path, float(timeout) if timeout else None))


async def _checkpoint(ctx: ContainerContext, container_id: str, location: Path, timeout: float | None) -> None:
    record = ctx.state.container(container_id)
    if record is None or record.state is not ContainerState.RUNNING:
        state = record.state.value if record is not None else "removed"
        raise FailedPrecondition(f"container {container_id} is {state}; only a running container is checkpointed")
    runtime = ctx.runtime(record.runtime_handler)
    token = secrets.token_hex(6)
    layers = ctx.layer_dir(record.id, record.config)
    files = CheckpointFiles(layers / f"checkpoint-{token}", partial_archive(location, token))
    staging = files.staging
    intent = await ctx.intents.begin(INTENT, record.id, files.to_plan())
    try:
        await asyncio.to_thread(staging.mkdir, 0o700)
        spec = json.loads(await asyncio.to_thread((ctx.bundle_dir(record.id) / "config.json").read_text))
        image = ctx.images.metadata.get(record.image_id)
        lowers = [ctx.images.snapshots.path(chain_id) for chain_id in (image.chain_ids if image else [])]
        await runtime.pause(record.id)
        try:
            kill_point("checkpoint_container.paused")
            await runtime.checkpoint(record.id, staging / CHECKPOINT_DIR, staging, timeout)
            await asyncio.to_thread(_write_files, ctx, record, spec, lowers, staging)
        finally:
            await runtime.resume(record.id)
        await asyncio.to_thread(write_archive, staging, location, files.partial)
    except OciRuntimeError as exc:
        raise runtime_error(exc, f"checkpoint container {record.id}") from exc
    finally:
        await asyncio.shield(_remove_files(ctx, files, intent))
    fields = {"id": record.id, "location": str(location), "bytes": location.stat().st_size}
    log.info("checkpointed container", extra={"fields": fields})


async def _remove_files(ctx: ContainerContext, files: CheckpointFiles, intent: Intent) -> None:
    await asyncio.to_thread(files.remove)
    await ctx.state.finish(intent)


async def discard_interrupted(ctx: ContainerContext, intent: Intent) -> None:
    """At start, for a checkpoint a crash cut short: its staging dir and partial archive go.
    (The container, if still paused, was resumed when the containers were reconciled.)"""
    await _remove_files(ctx, CheckpointFiles.from_plan(intent.plan), intent)


def _write_files(
    ctx: ContainerContext, record: ContainerRecord, spec: dict[str, Any], lowers: list[Path], staging: Path
) -> None:
    """What goes beside CRIU's images: metadata, the rootfs diff, the log (a blocking call)."""
    config = CheckpointConfig(
        id=record.id,
        name=record.name,
        rootfs_image=record.image_ref,
        rootfs_image_ref=record.image_id,
        rootfs_image_name=record.image_ref,
        runtime=record.runtime_handler,
        created=datetime.fromtimestamp(record.created_at / 1e9, UTC),
        checkpointed=datetime.now(UTC),
    )
    status = MessageToDict(container_status(record), preserving_proto_field_name=True, use_integers_for_enums=True)
    write_metadata(staging, config, spec, status)
    mount_points = [mount["destination"] for mount in spec.get("mounts") or []]
    upper = ctx.layer_dir(record.id, record.config) / "upper"
    write_rootfs_diff(upper, rootfs_changes(upper, lowers, mount_points), staging)
    with contextlib.suppress(FileNotFoundError):
        shutil.copyfile(record.log_path, staging / CONTAINER_LOG)
        os.chmod(staging / CONTAINER_LOG, 0o600)

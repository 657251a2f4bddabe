"""CreateContainer from a checkpoint archive: when config.image.image is the absolute path of an
archive file (as CRI-O and containerd take one), the container is made from the archive's base
image, its rootfs changes are put back, and conmon has runc restore the processes from CRIU's
images instead of creating a new one. The container runs from then on; StartContainer finds
it running and has nothing left to do.

The request supplies what belongs to the new pod (metadata, mounts, resources, security); every
bind mount the checkpointed container had must be among its mounts, or the processes would
find their files gone (CRI-O's rule). A missing mount source is made as CreateContainer makes
one, except that a source the checkpointed container had as a file is made as a file.

Nothing is pulled: the archive's base image must be present. Neither a pod with a user
namespace of its own nor an archive checkpointed in one is taken (FAILED_PRECONDITION): the
rootfs changes hold host IDs, and pycri does not shift them. That a container was restored is
kept in its record (restored_from), not in anything the request could set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pycri.api import api_pb2
from pycri.container.checkpoint_archive import (
    CHECKPOINT_DIR,
    CONTAINER_LOG,
    CheckpointArchiveError,
    apply_rootfs_diff,
    read_metadata,
    unpack_for_restore,
)
from pycri.container.context import ContainerContext
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound
from pycri.state.sandboxes import SandboxRecord
from pycri.userns.mappings import in_pod_user_namespace

# Mounts pycri gives every container itself: the new pod's own, not asked of the request.
_OWN_MOUNTS = frozenset(
    ("/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm")
    + ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
)
_FIELD = "config.image.image"


@dataclass(frozen=True)
class Restore:
    archive: Path
    # The request's config with the archive's base image.
    config: api_pb2.ContainerConfig
    # Host paths of the request's bind mounts whose source the checkpointed container had as a
    # file, with its permission bits: made as files, not directories, when missing.
    file_sources: dict[Path, int]


def archive_named(config: api_pb2.ContainerConfig) -> Path | None:
    """The checkpoint archive config.image.image names, if it names a file rather than an image."""
    image = config.image.image
    if not image.startswith("/") or not os.path.isfile(image):
        return None
    return Path(image)


async def plan_restore(
    ctx: ContainerContext, sandbox: SandboxRecord, config: api_pb2.ContainerConfig
) -> Restore | None:
    """None for an ordinary image; for an archive, the config to create the container from.
    FAILED_PRECONDITION where CRIU is unusable or a user namespace is involved, INVALID_ARGUMENT
    for an archive that is no checkpoint or a request that lacks its bind mounts, NOT_FOUND
    while its image is not pulled."""
    archive = archive_named(config)
    if archive is None:
        return None
    if sandbox.user_namespace is not None or in_pod_user_namespace(config):
        raise FailedPrecondition(
            f"{_FIELD}: restoring {archive} into a pod with a user namespace of its own is not supported: "
            "the archive's files would keep the host IDs they had, not the pod's"
        )
    await ctx.criu.require(f"restore a container from {archive}")
    try:
        metadata = await asyncio.to_thread(read_metadata, archive)
    except CheckpointArchiveError as err:
        raise InvalidArgument(f"{_FIELD}: {err}") from None
    linux = metadata.spec.get("linux")
    if isinstance(linux, dict) and linux.get("uidMappings"):
        raise FailedPrecondition(
            f"{_FIELD}: {archive} was checkpointed in a user namespace; its files hold that pod's host IDs, "
            "which pycri does not shift on restore"
        )
    checkpointed = metadata.config
    image = None
    for reference in (checkpointed.rootfs_image_ref, checkpointed.rootfs_image_name):
        image = await ctx.images.lookup(reference) if reference else None
        if image is not None:
            break
    if image is None:
        wanted = checkpointed.rootfs_image_name or checkpointed.rootfs_image_ref
        raise NotFound(
            f"{_FIELD}: checkpoint {archive} was made from image {wanted!r}, which is not present; "
            f"a restore pulls nothing: pull {wanted!r} first"
        )
    _check_mounts(metadata.spec, config, archive)
    restored = api_pb2.ContainerConfig()
    restored.CopyFrom(config)
    restored.image.image = checkpointed.rootfs_image_name or image.id
    file_sources = {
        Path(mount.host_path): metadata.file_binds[mount.container_path]
        for mount in config.mounts
        if not mount.image.image and mount.container_path in metadata.file_binds
    }
    return Restore(archive, restored, file_sources)


def _check_mounts(spec: dict[str, object], config: api_pb2.ContainerConfig, archive: Path) -> None:
    mounts = spec.get("mounts")
    requested = {mount.container_path for mount in config.mounts}
    missing = [
        str(mount.get("destination"))
        for mount in (mounts if isinstance(mounts, list) else [])
        if isinstance(mount, dict) and mount.get("type") == "bind"
        if mount.get("destination") not in _OWN_MOUNTS and mount.get("destination") not in requested
    ]
    if missing:
        raise InvalidArgument(f"config.mounts: restoring {archive} needs mounts at {', '.join(missing)}")


def unpack_restore(restore: Restore, rootfs: Path, bundle: Path, log_path: Path) -> Path:
    """Put the archive's rootfs changes into the mounted `rootfs`, CRIU's images into the bundle
    and the old log at `log_path` (when it has none yet); returns the images dir (blocking)."""
    staging = bundle / "restore"
    staging.mkdir(mode=0o700)
    try:
        unpack_for_restore(restore.archive, staging)
        apply_rootfs_diff(staging, rootfs)
        if (staging / CONTAINER_LOG).is_file() and not log_path.exists():
            shutil.copyfile(staging / CONTAINER_LOG, log_path)
        images = bundle / CHECKPOINT_DIR
        os.rename(staging / CHECKPOINT_DIR, images)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return images

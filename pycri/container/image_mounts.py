"""Image volumes: an image's snapshots mounted read-only and bound into a container.

Each image mount becomes a read-only overlay (no upper dir) under the
container's layer dir, leased like the rootfs; the spec then sees a plain
bind mount of it (or of its image_sub_path). The container's teardown
unmounts them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path, PurePosixPath

from pycri.api import api_pb2
from pycri.container.rootfs import mount_leased
from pycri.errors import InvalidArgument, NotFound
from pycri.image import overlay
from pycri.image.service import ImageService

IMAGE_MOUNTS_DIR = "image-mounts"


async def mount_image_volumes(
    images: ImageService, config: api_pb2.ContainerConfig, container_id: str, layers: Path, userns: Path | None = None
) -> api_pb2.ContainerConfig:
    """Mount the config's image volumes; returns the config with each one turned into a bind
    mount, while `config` itself gets each volume's image ID in image.image_ref for status.
    In a pod with a user namespace (pinned at `userns`) the volume's layers are ID-mapped by it,
    so its bind needs no mapping of its own."""
    for_spec = api_pb2.ContainerConfig()
    for_spec.CopyFrom(config)
    for number, mount in enumerate(config.mounts):
        if not mount.image.image:
            continue
        field = f"mounts[{number}]"
        if not mount.readonly:
            raise InvalidArgument(f"{field}.readonly: an image volume must be read-only")
        image = await images.lookup(mount.image.image)
        if image is None:
            raise NotFound(f"{field}.image: image {mount.image.image!r} not found: pull it first")
        target = layers / IMAGE_MOUNTS_DIR / str(number)
        await asyncio.to_thread(target.mkdir, parents=True)
        await mount_leased(images, container_id, image.chain_ids, target, writable=None, userns=userns)
        source = _sub_path(target, mount.image_sub_path, f"{field}.image_sub_path")
        mount.image.image_ref = image.id
        bind = for_spec.mounts[number]
        bind.ClearField("image")
        bind.image_sub_path = ""
        bind.host_path = str(source)
        bind.ClearField("uidMappings")
        bind.ClearField("gidMappings")
    return for_spec


def _sub_path(root: Path, sub_path: str, field: str) -> Path:
    """`root/sub_path`, which must exist inside the image volume."""
    if not sub_path:
        return root
    relative = PurePosixPath(sub_path)
    if relative.is_absolute() or ".." in relative.parts:
        raise InvalidArgument(f"{field}: {sub_path!r} must be a relative path inside the image")
    source = root.joinpath(*relative.parts)
    resolved = Path(os.path.realpath(source))
    if not resolved.is_relative_to(root) or not os.path.lexists(source):
        raise InvalidArgument(f"{field}: {sub_path!r} does not exist in the image")
    return source


def unmount_image_volumes(layers: Path) -> None:
    mounts = layers / IMAGE_MOUNTS_DIR
    if mounts.is_dir():
        for target in mounts.iterdir():
            overlay.unmount(target)

"""A container's root filesystem: its image's snapshots, leased and mounted as an overlay.

Containers, image volumes and the pause process all get their layers this way: the lease
(owned by the container or sandbox id) keeps the snapshots from garbage collection while
the mount uses them, even after the image itself is removed.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from pycri.image.service import ImageService

WRITABLE_DIRS = ("upper", "work")


async def mount_leased(
    images: ImageService, owner: str, chain_ids: list[str], target: Path, writable: Path | None
) -> None:
    """Lease the snapshots to `owner` and mount them at `target`: read-only, or writable with
    upper and work dirs under `writable`."""
    await images.metadata.lease_snapshots(owner, chain_ids)
    lowers = list(reversed(chain_ids))
    if writable is None:
        await asyncio.to_thread(images.snapshots.mount_rootfs, lowers, None, None, target, True)
    else:
        await asyncio.to_thread(images.snapshots.mount_rootfs, lowers, writable / "upper", writable / "work", target)


def make_layer_dirs(parent: Path) -> None:
    """The dirs of a writable rootfs: rootfs (the mount point), upper and work."""
    parent.mkdir(parents=True, mode=0o700)
    for name in ("rootfs", *WRITABLE_DIRS):
        (parent / name).mkdir()


def write_bundle(bundle: Path, spec: dict[str, object]) -> None:
    """config.json carries the container's environment (secrets): only root may read it."""
    bundle.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(bundle / "config.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as spec_file:
        json.dump(spec, spec_file)

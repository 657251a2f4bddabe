"""A container's root filesystem: its image's snapshots, leased and mounted as an overlay.

Containers, image volumes and the pause process all get their layers this way: the lease
(owned by the container or sandbox id) keeps the snapshots from garbage collection while
the mount uses them, even after the image itself is removed. In a pod with a user namespace
of its own, the layers are ID-mapped by it (pycri.userns.mounts).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from pycri.image.service import ImageService
from pycri.userns.mounts import mount_idmapped_layers

WRITABLE_DIRS = ("upper", "work")


async def mount_leased(
    images: ImageService,
    owner: str,
    chain_ids: list[str],
    target: Path,
    writable: Path | None,
    userns: Path | None = None,
) -> None:
    """Lease the snapshots to `owner` and mount them at `target`: read-only, or writable with
    upper and work dirs under `writable`; ID-mapped by the user namespace pinned at `userns`."""
    await images.metadata.lease_snapshots(owner, chain_ids)
    lowers = list(reversed(chain_ids))
    if userns is not None:
        paths = [images.snapshots.path(chain_id) for chain_id in lowers]
        upper, work = (writable / "upper", writable / "work") if writable is not None else (None, None)
        await asyncio.to_thread(mount_idmapped_layers, paths, target, upper, work, userns)
    elif writable is None:
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

"""What storing an image takes, wherever it comes from (a registry, an archive)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from pycri.errors import DataLoss
from pycri.image.manifest import Descriptor


@dataclass(frozen=True)
class ImageSource:
    """What storing an image takes, wherever it comes from (a registry, an archive): the
    verified manifest and config, and a way to read each layer blob."""

    manifest_digest: str
    manifest: bytes
    config: Descriptor
    config_bytes: bytes
    layers: tuple[Descriptor, ...]
    # Yields the blob of one layer; the content store verifies digest and size.
    open_layer: Callable[[Descriptor], AsyncIterator[bytes]]
    # Indexes the manifest was chosen from, by digest: kept as blobs, like the manifest.
    indexes: dict[str, bytes] = field(default_factory=dict)


def config_and_diff_ids(config_bytes: bytes, label: str) -> tuple[dict[str, Any], list[str]]:
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise DataLoss(f"{label}: the image config is not valid JSON: {exc}") from None
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = (rootfs.get("diff_ids") if isinstance(rootfs, dict) else None) or []
    if not isinstance(config, dict) or not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise DataLoss(f"{label}: the image config is not an object with a rootfs.diff_ids list of digests")
    return config, diff_ids


async def all_or_first_error(operations: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run all to their end, then raise the first failure: a failed pull must not
    return while sibling layers are still being written."""
    tasks = [asyncio.ensure_future(operation) for operation in operations]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise
    # Every failure is looked at, so none is reported again as "exception never retrieved".
    failures = [task.exception() for task in tasks if task.exception() is not None]
    if failures:
        raise failures[0]  # type: ignore[misc]

"""The image service: CRI image semantics over the registry client, content store,
snapshots and image metadata."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.config import Config
from pycri.errors import DataLoss, DeadlineExceeded, InvalidArgument, NotFound, Unauthenticated, Unavailable
from pycri.image import registry
from pycri.image.auth import Credentials
from pycri.image.content import ContentError, ContentStore
from pycri.image.manifest import Descriptor
from pycri.image.metadata import ImageMetadata, ImageRecord
from pycri.image.reference import InvalidReference, Reference, is_image_id, parse_reference
from pycri.image.snapshots import SnapshotError, SnapshotStore, chain_ids
from pycri.image.tarstream import LayerError
from pycri.state.store import Store

log = logging.getLogger(__name__)

FS_USAGE_MAX_AGE_SECONDS = 10.0
_HEX = frozenset("0123456789abcdef")


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


@dataclass
class _FsUsage:
    taken_at: float
    reply: api_pb2.ImageFsInfoResponse


def image_user(config: dict[str, Any]) -> tuple[int | None, str]:
    """The image's user as CRI reports it: a numeric uid, or a name."""
    user = (config.get("config") or {}).get("User") or ""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name), ""
    return None, name


class ImageService:
    def __init__(self, config: Config, store: Store, gc_grace_seconds: float = 0.0) -> None:
        """gc_grace_seconds > 0 makes garbage collection spare blobs and snapshots changed that
        recently: for a process beside a running daemon, whose pulls it cannot see."""
        self._config = config
        self._gc_grace_seconds = gc_grace_seconds
        self.content = ContentStore(config.root_dir)
        self.snapshots = SnapshotStore(config.root_dir)
        self.metadata = ImageMetadata(store)
        self._registry_options = registry.RegistryOptions(
            mirrors=dict(config.images.mirrors),
            plain_http=set(config.images.insecure_registries),
            platform=config.images.platform,
            docker_config=str(config.images.docker_config) if config.images.docker_config else None,
            max_concurrent_downloads=config.images.max_concurrent_downloads,
        )
        self._registry: registry.RegistryClient | None = None
        # Blobs and snapshots of pulls not yet recorded: garbage collection must not take them.
        self._pulling: Counter[str] = Counter()
        self._fs_usage: _FsUsage | None = None
        self._pause_name = self._normalised(config.runtime.pause_image)

    async def start(self) -> None:
        await asyncio.to_thread(self._clean_leftovers)
        self._registry = registry.RegistryClient(self._registry_options)

    def _clean_leftovers(self) -> None:
        self.content.cleanup_ingest()
        self.snapshots.cleanup_tmp()

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.aclose()

    @staticmethod
    def _normalised(image: str) -> str:
        try:
            ref = parse_reference(image)
        except InvalidReference:
            return image
        return ref.repo_digest or ref.repo_tag or ref.name

    # -- pull ---------------------------------------------------------------

    async def pull(self, image: str, auth: api_pb2.AuthConfig | None = None) -> str:
        """Pull `image` and return its ID (the config digest)."""
        ref = self.parse(image)
        credentials = None
        if auth is not None:
            credentials = Credentials.from_auth_config(
                auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token
            )
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.images.pull_timeout):
                image_id = await self._pull(ref, credentials)
        except TimeoutError:
            raise DeadlineExceeded(
                f"pull {ref}: not finished after {self._config.images.pull_timeout:g}s (images.pull_timeout)"
            ) from None
        except registry.NotFound as exc:
            raise NotFound(str(exc)) from exc
        except registry.Unauthorized as exc:
            raise Unauthenticated(str(exc)) from exc
        except registry.DigestMismatch as exc:
            raise DataLoss(str(exc)) from exc
        except registry.RegistryError as exc:
            raise Unavailable(str(exc)) from exc
        except (ContentError, SnapshotError, LayerError) as exc:
            raise DataLoss(f"pull {ref}: {exc}") from exc
        seconds = round(time.monotonic() - started, 3)
        log.info("pulled image", extra={"fields": {"ref": str(ref), "id": image_id, "seconds": seconds}})
        return image_id

    def parse(self, image: str) -> Reference:
        try:
            return parse_reference(image)
        except InvalidReference as exc:
            raise InvalidArgument(str(exc)) from None

    async def _pull(self, ref: Reference, credentials: Credentials | None) -> str:
        assert self._registry is not None, "ImageService.start() was not awaited"
        client = self._registry
        resolved = await client.resolve(ref, credentials)
        config_bytes = await self._fetch_small(resolved, resolved.config, credentials)
        source = ImageSource(
            manifest_digest=resolved.manifest_digest,
            manifest=resolved.manifest,
            config=resolved.config,
            config_bytes=config_bytes,
            layers=resolved.layers,
            open_layer=lambda layer: client.open_blob(resolved, layer, credentials),
            indexes={resolved.repo_digest: resolved.index} if resolved.index is not None else {},
        )
        tags = [ref.repo_tag] if ref.repo_tag else []
        record = await self._store(source, tags, [f"{ref.name}@{resolved.repo_digest}"], f"pull {ref}")
        return record.id

    async def import_image(self, source: ImageSource, tags: list[str], digests: list[str], label: str) -> ImageRecord:
        """Store an image read from an archive under tags and digests ("repo:tag", "repo@digest");
        `label` starts error messages. A failure leaves nothing of the image behind."""
        try:
            record = await self._store(source, tags, digests, label)
        except (ContentError, SnapshotError, LayerError) as exc:
            raise DataLoss(f"{label}: {exc}") from exc
        log.info("imported image", extra={"fields": {"id": record.id, "tags": ",".join(tags), "from": label}})
        return record

    async def _store(self, source: ImageSource, tags: list[str], digests: list[str], label: str) -> ImageRecord:
        """Unpack the layers that have no snapshot yet and record the image; on failure, take
        away again what this call stored and nothing references."""
        config, diff_ids = _config_and_diff_ids(source.config_bytes, label)
        if len(diff_ids) != len(source.layers):
            raise DataLoss(f"{label}: the image config lists {len(diff_ids)} layers, the manifest {len(source.layers)}")
        chains = chain_ids(diff_ids)
        blobs = [
            self.content.put_bytes(source.config.digest, source.config_bytes),
            self.content.put_bytes(source.manifest_digest, source.manifest),
            *(self.content.put_bytes(digest, index) for digest, index in source.indexes.items()),
        ]
        protected = [*blobs, *chains]
        self._pulling.update(protected)
        try:
            await _all_or_first_error(
                self._unpack_layer(source, layer, chain, diff_id)
                for layer, chain, diff_id in zip(source.layers, chains, diff_ids, strict=True)
            )
            record = ImageRecord(
                id=source.config.digest,
                manifest_digest=source.manifest_digest,
                config=config,
                chain_ids=chains,
                blobs=blobs,
                size=source.config.size + len(source.manifest) + sum(layer.size for layer in source.layers),
                created_at=time.time_ns(),
                tags=tags,
                digests=digests,
            )
            await asyncio.to_thread(self.metadata.save, record)
        except BaseException:
            self._release(protected)
            # Only what this call stored: a sweep of the whole store could take what another
            # process (a daemon beside the CLI) has stored but not yet recorded.
            await asyncio.shield(self._collect(blobs, chains))
            raise
        self._release(protected)
        self._fs_usage = None
        return record

    def _release(self, protected: list[str]) -> None:
        self._pulling.subtract(protected)
        self._pulling = +self._pulling  # drops the zero counts

    async def _fetch_small(
        self, resolved: registry.ResolvedImage, descriptor: Descriptor, credentials: Credentials | None
    ) -> bytes:
        assert self._registry is not None
        if not self.content.has(descriptor.digest):
            chunks = self._registry.open_blob(resolved, descriptor, credentials)
            await self.content.ingest(descriptor.digest, descriptor.size, chunks)
        return self.content.read_bytes(descriptor.digest)

    async def _unpack_layer(self, source: ImageSource, layer: Descriptor, chain_id: str, diff_id: str) -> None:
        """Fetch and unpack one layer unless its snapshot exists. The compressed blob is
        not kept: the snapshot is what containers use."""
        if self.snapshots.has(chain_id):
            return
        blob = await self.content.ingest(layer.digest, layer.size, source.open_layer(layer))
        try:
            await self.snapshots.unpack(chain_id, blob, layer.media_type, diff_id)
        finally:
            self.content.delete(layer.digest)

    # -- lookups ------------------------------------------------------------

    def find(self, image: str) -> ImageRecord | None:
        """The image that `image` names: an ID, a unique ID prefix, or a reference."""
        if not image:
            raise InvalidArgument("image: an image reference or ID is required")
        hex_part = image.removeprefix("sha256:")
        if hex_part and set(hex_part) <= _HEX:
            candidates = self.metadata.find_by_id_prefix("sha256:" + hex_part)
            if len(candidates) == 1:
                return candidates[0]
            if is_image_id(image):
                return None
        try:
            ref = parse_reference(image)
        except InvalidReference as exc:
            raise InvalidArgument(str(exc)) from None
        image_id = self.metadata.resolve_name(ref.repo_digest or ref.repo_tag or ref.name)
        return None if image_id is None else self.metadata.get(image_id)

    def to_proto(self, record: ImageRecord) -> api_pb2.Image:
        uid, username = image_user(record.config)
        image = api_pb2.Image(
            id=record.id,
            repo_tags=record.tags,
            repo_digests=record.digests,
            size=record.size,
            username=username,
            spec=api_pb2.ImageSpec(image=record.id),
            pinned=self._pause_name in record.tags or self._pause_name in record.digests,
        )
        if uid is not None:
            image.uid.value = uid
        return image

    async def list(self, image_filter: str = "") -> list[api_pb2.Image]:
        if image_filter:
            found = await asyncio.to_thread(self.find, image_filter)
            records = [found] if found is not None else []
        else:
            records = await asyncio.to_thread(self.metadata.list)
        return [self.to_proto(record) for record in records]

    async def status(self, image: str, verbose: bool = False) -> tuple[api_pb2.Image, dict[str, str]] | None:
        record = await asyncio.to_thread(self.find, image)
        if record is None:
            return None
        info: dict[str, str] = {}
        if verbose:
            details = {"imageSpec": record.config, "chainIDs": record.chain_ids}
            info["info"] = json.dumps({**details, "manifestDigest": record.manifest_digest})
        return self.to_proto(record), info

    # -- removal and garbage collection ---------------------------------------

    async def remove(self, image: str) -> None:
        """Remove by ID, tag or digest; removing one tag keeps the image's other tags."""
        record = await asyncio.to_thread(self.find, image)
        if record is None:
            return
        ref = None if is_image_id(image) or image.removeprefix("sha256:") in record.id else self.parse(image)
        if ref is not None and ref.repo_tag in record.tags and not ref.digest:
            removed = await asyncio.to_thread(self.metadata.remove_name, ref.repo_tag)
        else:
            removed = await asyncio.to_thread(self.metadata.remove, record.id)
        log.info("removed image", extra={"fields": {"image": image, "id": record.id, "whole_image": removed}})
        if removed:
            await self.collect_garbage()

    async def collect_garbage(self) -> tuple[int, int]:
        """Delete blobs and snapshots nothing references; returns how many of each went.
        With a grace period, those changed within it are spared."""
        blobs = await asyncio.to_thread(list, self.content.list())
        chains = await asyncio.to_thread(self.snapshots.list)
        if self._gc_grace_seconds > 0:
            blobs, chains = await asyncio.to_thread(self._settled, blobs, chains)
        return await self._collect(blobs, chains)

    def _settled(self, blobs: list[str], chains: list[str]) -> tuple[list[str], list[str]]:
        cutoff = time.time() - self._gc_grace_seconds
        return (
            [digest for digest in blobs if _changed_at(self.content.path(digest)) < cutoff],
            [chain for chain in chains if _changed_at(self.snapshots.path(chain).parent) < cutoff],
        )

    async def _collect(self, blobs: list[str], chains: list[str]) -> tuple[int, int]:
        """Delete those of `blobs` and of the snapshots `chains` that exist and nothing references."""
        blobs_kept = await asyncio.to_thread(self.metadata.referenced_blobs)
        chains_kept = await asyncio.to_thread(self.metadata.referenced_chain_ids)
        in_use = set(self._pulling)
        doomed_blobs = [d for d in blobs if d not in blobs_kept and d not in in_use]
        doomed_chains = [c for c in chains if c not in chains_kept and c not in in_use]
        doomed_blobs, doomed_chains = await asyncio.to_thread(self._delete, doomed_blobs, doomed_chains)
        if doomed_blobs or doomed_chains:
            log.info(
                "collected garbage",
                extra={"fields": {"blobs": len(doomed_blobs), "snapshots": len(doomed_chains)}},
            )
        self._fs_usage = None
        return len(doomed_blobs), len(doomed_chains)

    def _delete(self, blobs: Iterable[str], chains: Iterable[str]) -> tuple[list[str], list[str]]:
        """Delete those that exist; returns them."""
        deleted_blobs = [digest for digest in blobs if self.content.has(digest)]
        deleted_chains = [chain_id for chain_id in chains if self.snapshots.has(chain_id)]
        for digest in deleted_blobs:
            self.content.delete(digest)
        for chain_id in deleted_chains:
            self.snapshots.remove(chain_id)
        return deleted_blobs, deleted_chains

    # -- usage ------------------------------------------------------------------

    async def fs_info(self) -> api_pb2.ImageFsInfoResponse:
        """Bytes and inodes under the image store, re-measured at most every few seconds."""
        cached = self._fs_usage
        if cached is not None and time.monotonic() - cached.taken_at < FS_USAGE_MAX_AGE_SECONDS:
            return cached.reply
        image_bytes, image_inodes = await asyncio.to_thread(self._image_usage)
        usage = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(self._config.root_dir)),
        )
        usage.used_bytes.value = image_bytes
        usage.inodes_used.value = image_inodes
        reply = api_pb2.ImageFsInfoResponse(image_filesystems=[usage])
        self._fs_usage = _FsUsage(time.monotonic(), reply)
        return reply

    def _image_usage(self) -> tuple[int, int]:
        content = self.content.usage()
        snapshots = self.snapshots.usage()
        return content[0] + snapshots[0], content[1] + snapshots[1]


def _config_and_diff_ids(config_bytes: bytes, label: str) -> tuple[dict[str, Any], list[str]]:
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise DataLoss(f"{label}: the image config is not valid JSON: {exc}") from None
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = (rootfs.get("diff_ids") if isinstance(rootfs, dict) else None) or []
    if not isinstance(config, dict) or not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise DataLoss(f"{label}: the image config is not an object with a rootfs.diff_ids list of digests")
    return config, diff_ids


def _changed_at(path: Path) -> float:
    """When the file or directory was last written or renamed; infinity when it is gone."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return math.inf
    return max(info.st_mtime, info.st_ctime)


async def _all_or_first_error(operations: Iterable[Coroutine[Any, Any, None]]) -> None:
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

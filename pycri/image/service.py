"""The image service: CRI image semantics over the registry client, content store,
snapshots and image metadata.

An unpack and a removal record their intent before they act (see UNPACK_LAYER and
REMOVE_IMAGE); `recover` at start undoes or finishes what a crash left, then collects
garbage. Reads come from memory (ImageMetadata).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycri import telemetry
from pycri.api import api_pb2
from pycri.config import Config, ImageLimits
from pycri.errors import (
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from pycri.faults import kill_point
from pycri.image.auth import Credentials
from pycri.image.collector import GarbageCollector
from pycri.image.content import ContentError, ContentStore
from pycri.image.manifest import Descriptor
from pycri.image.metadata import ImageMetadata, ImageRecord
from pycri.image.reference import InvalidReference, Reference, is_image_id, parse_reference
from pycri.image.sharing import ChangeWatch, announce_change, lock_store, unlock_store
from pycri.image.snapshots import UNPACK_LAYER, SnapshotError, SnapshotStore, chain_ids
from pycri.image.source import ImageSource, all_or_first_error, config_and_diff_ids
from pycri.image.tarstream import LayerError, LimitExceeded
from pycri.image.unpack import ImageBudget, UnpackGuard
from pycri.state.intents import Intent, IntentLog
from pycri.state.store import Store

if TYPE_CHECKING:  # the registry client and its HTTP stack are imported by the first pull
    from pycri.image import registry

log = logging.getLogger(__name__)

FS_USAGE_MAX_AGE_SECONDS = 10.0
# A layer's entry names reach error messages; a gRPC client drops a status whose message
# passes its metadata limit (8 KiB soft, 16 KiB hard by default) and reports a removed stream.
ERROR_DETAIL_MAX_CHARS = 2048
_HEX = frozenset("0123456789abcdef")
# The intent of RemoveImage, on the image ID. Plan: image_id; tag (the one tag to drop, or
# None for the whole image); names (those that go); whole_image; and the blobs and
# chain_ids garbage collection will then look at.
REMOVE_IMAGE = "remove_image"
# The intents `ImageService.recover` resolves.
IMAGE_INTENT_KINDS = (UNPACK_LAYER, REMOVE_IMAGE)


@dataclass
class _FsUsage:
    taken_at: float
    reply: api_pb2.ImageFsInfoResponse


def _bounded(message: str) -> str:
    if len(message) <= ERROR_DETAIL_MAX_CHARS:
        return message
    return message[:ERROR_DETAIL_MAX_CHARS] + f"... ({len(message) - ERROR_DETAIL_MAX_CHARS} more characters)"


def image_user(config: dict[str, Any]) -> tuple[int | None, str]:
    """The image's user as CRI reports it: a numeric uid, or a name."""
    user = (config.get("config") or {}).get("User") or ""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name), ""
    return None, name


def registry_options(config: Config) -> registry.RegistryOptions:
    from pycri.image import registry

    images = config.images
    return registry.RegistryOptions(
        mirrors=dict(images.mirrors),
        plain_http=set(images.insecure_registries),
        platform=images.platform,
        docker_config=str(images.docker_config) if images.docker_config else None,
        max_concurrent_downloads=images.max_concurrent_downloads,
        mirror_credentials=set(images.mirror_credentials),
        foreign_layer_hosts=set(images.foreign_layer_hosts),
    )


class ImageService:
    def __init__(self, config: Config, store: Store, command: bool = False, gc_grace_seconds: float = 0.0) -> None:
        """A `command` is `pycri images`, perhaps beside a daemon on the same root: it
        announces its changes to that daemon. gc_grace_seconds > 0 makes garbage collection
        spare blobs and snapshots changed that recently (a daemon's pulls it cannot see)."""
        self._config = config
        self._command = command
        self._intents = IntentLog(store)
        self.content = ContentStore(config.root_dir)
        self.snapshots = SnapshotStore(config.root_dir, self._intents, config.images.unpack_workers)
        self.metadata = ImageMetadata(store, self.snapshots.has)
        self._collector = GarbageCollector(self.content, self.snapshots, self.metadata, gc_grace_seconds)
        self._changes = ChangeWatch(config.root_dir)
        self._stale = False
        self._reloading = asyncio.Lock()
        self._removing = asyncio.Lock()
        self._registry: registry.RegistryClient | None = None
        self._fs_usage: _FsUsage | None = None
        self._pause_name = self._normalised(config.runtime.pause_image)

    async def start(self) -> None:
        """The daemon's start: watch for changes `pycri images` makes (the first pull opens the registry client)."""
        self._changes.start()

    def _client(self) -> registry.RegistryClient:
        if self._registry is None:
            from pycri.image import registry

            self._registry = registry.RegistryClient(registry_options(self._config))
        return self._registry

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: registry endpoints, credentials, pull timeout and limits apply to
        what pulls do from now on. The dirs, platform, download slots and pause image stay."""
        if self._registry is not None:
            self._registry.reconfigure(registry_options(config))
        self._config = config

    async def recover(self, pending: list[Intent]) -> None:
        """At start, before serving: undo the unpacks and finish the removals a crash cut
        short (`pending`: the unfinished intents of IMAGE_INTENT_KINDS), drop temp files,
        then collect every blob and snapshot nothing references. Run it after leases of
        owners that no longer exist are released. Waits for a `pycri images` command."""
        lock = await asyncio.to_thread(lock_store, self._config.root_dir, True, True)
        try:
            for intent in pending:
                if intent.kind == UNPACK_LAYER:
                    await asyncio.to_thread(self.snapshots.discard_unpack, intent.plan)
                    await self._intents.finish(intent)
                elif intent.kind == REMOVE_IMAGE:
                    await self._remove_planned(intent)
                    log.info("finished an interrupted image removal", extra={"fields": intent.plan})
                else:
                    log.warning("left an intent of an unknown kind", extra={"fields": {"kind": intent.kind}})
            await asyncio.to_thread(self._clean_leftovers)
            await self._collector.sweep()
        finally:
            assert lock is not None
            unlock_store(lock)

    def _clean_leftovers(self) -> None:
        self.content.cleanup_ingest()
        self.snapshots.cleanup_tmp()

    async def close(self) -> None:
        self._changes.close()
        self.snapshots.close()
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
        from pycri.image import registry

        ref = self.parse(image)
        credentials = None
        if auth is not None:
            try:
                credentials = Credentials.from_auth_config(
                    auth.username,
                    auth.password,
                    auth.auth,
                    auth.identity_token,
                    auth.registry_token,
                    auth.server_address,
                )
            except ValueError as exc:
                raise InvalidArgument(f"auth: {exc}") from None
        started = time.monotonic()
        with telemetry.image_pull(str(ref)):
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
            except registry.TooLarge as exc:
                raise ResourceExhausted(_bounded(str(exc))) from exc
            except registry.RegistryError as exc:
                raise Unavailable(str(exc)) from exc
            except LimitExceeded as exc:
                raise ResourceExhausted(_bounded(f"pull {ref}: {exc}")) from exc
            except (ContentError, SnapshotError, LayerError) as exc:
                raise DataLoss(_bounded(f"pull {ref}: {exc}")) from exc
        seconds = round(time.monotonic() - started, 3)
        log.info("pulled image", extra={"fields": {"ref": str(ref), "id": image_id, "seconds": seconds}})
        return image_id

    @property
    def limits(self) -> ImageLimits:
        return self._config.images.limits

    def parse(self, image: str) -> Reference:
        try:
            return parse_reference(image)
        except InvalidReference as exc:
            raise InvalidArgument(str(exc)) from None

    async def _pull(self, ref: Reference, credentials: Credentials | None) -> str:
        client = self._client()
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
        kill_point("pull_image.committed")
        return record.id

    async def import_image(self, source: ImageSource, tags: list[str], digests: list[str], label: str) -> ImageRecord:
        """Store an image read from an archive under tags and digests ("repo:tag", "repo@digest");
        `label` starts error messages. A failure leaves nothing of the image behind."""
        try:
            record = await self._store(source, tags, digests, label)
        except LimitExceeded as exc:
            raise ResourceExhausted(_bounded(f"{label}: {exc}")) from exc
        except (ContentError, SnapshotError, LayerError) as exc:
            raise DataLoss(_bounded(f"{label}: {exc}")) from exc
        log.info("imported image", extra={"fields": {"id": record.id, "tags": ",".join(tags), "from": label}})
        return record

    async def _store(self, source: ImageSource, tags: list[str], digests: list[str], label: str) -> ImageRecord:
        """Unpack the layers that have no snapshot yet and record the image; on failure, take
        away again what this call stored and nothing references."""
        config, diff_ids = config_and_diff_ids(source.config_bytes, label)
        if len(diff_ids) != len(source.layers):
            raise DataLoss(f"{label}: the image config lists {len(diff_ids)} layers, the manifest {len(source.layers)}")
        chains = chain_ids(diff_ids)
        small = {source.config.digest: source.config_bytes, source.manifest_digest: source.manifest, **source.indexes}
        protected = [*small, *chains]
        self._collector.protect(protected)
        blobs: list[str] = []
        budget = ImageBudget(self._config.images.limits.image_unpacked_max_bytes)
        try:
            for digest, data in small.items():  # each one fsynced: not on the event loop
                blobs.append(await asyncio.to_thread(self.content.put_bytes, digest, data))
            await all_or_first_error(
                self._unpack_layer(source, layer, chain, diff_id, budget)
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
            await self.metadata.save(record)
        except BaseException:
            self._collector.unprotect(protected)
            # Only what this call stored: a sweep of the whole store could take what another
            # process (a daemon beside the CLI) has stored but not yet recorded.
            await asyncio.shield(self._collector.collect(blobs, chains))
            raise
        self._collector.unprotect(protected)
        self._changed()
        return record

    def _changed(self) -> None:
        self._fs_usage = None
        if self._command:
            announce_change(self._config.root_dir)

    async def _catch_up(self) -> None:
        """Reload memory when a `pycri images` command changed the tables since the last call."""
        if self._changes.changed():
            self._stale = True
        if self._stale or self._reloading.locked():
            async with self._reloading:
                if self._stale:
                    self._stale = False
                    await self.metadata.reload()

    async def _fetch_small(
        self, resolved: registry.ResolvedImage, descriptor: Descriptor, credentials: Credentials | None
    ) -> bytes:
        assert self._registry is not None
        limit = self._config.images.limits.config_max_bytes
        if descriptor.size > limit:
            raise ResourceExhausted(
                f"image config {descriptor.digest} of {descriptor.size} bytes is over the {limit}"
                " of images.limits.config_max_bytes"
            )
        if not self.content.has(descriptor.digest):
            chunks = self._registry.open_blob(resolved, descriptor, credentials)
            await self.content.ingest(descriptor.digest, descriptor.size, chunks)
        return self.content.read_bytes(descriptor.digest)

    async def _unpack_layer(
        self, source: ImageSource, layer: Descriptor, chain_id: str, diff_id: str, budget: ImageBudget
    ) -> None:
        """Fetch and unpack one layer unless its snapshot exists. The compressed blob is
        not kept: the snapshot is what containers use."""
        if self.snapshots.has(chain_id):
            return
        with telemetry.span("image.fetch", {"pycri.layer.digest": layer.digest, "pycri.layer.size": layer.size}):
            blob = await self.content.ingest(layer.digest, layer.size, source.open_layer(layer))
        try:
            guard = UnpackGuard(self._config.images.limits, budget)
            with telemetry.span("image.unpack", {"pycri.layer.digest": layer.digest, "pycri.layer.chain_id": chain_id}):
                await self.snapshots.unpack(chain_id, blob, layer.media_type, diff_id, guard)
        finally:
            self.content.delete(layer.digest)

    # -- lookups ------------------------------------------------------------

    def find(self, image: str) -> ImageRecord | None:
        """The image that `image` names. Memory only: safe from any thread."""
        return self._locate(image)[0]

    def _locate(self, image: str) -> tuple[ImageRecord | None, bool]:
        """(the image, whether it was found by ID). In this order: a full ID, a name (so a tag
        made of hex digits is that tag, never someone's ID), a unique ID prefix."""
        if not image:
            raise InvalidArgument("image: an image reference or ID is required")
        hex_part = image.removeprefix("sha256:")
        if is_image_id(image):
            return self.metadata.get("sha256:" + hex_part), True
        looks_like_id = bool(hex_part) and set(hex_part) <= _HEX
        if not image.startswith("sha256:"):
            try:
                ref = parse_reference(image)
            except InvalidReference as exc:
                if not looks_like_id:
                    raise InvalidArgument(str(exc)) from None
            else:
                image_id = self.metadata.resolve_name(ref.repo_digest or ref.repo_tag or ref.name)
                if image_id is not None:
                    return self.metadata.get(image_id), False
        if not looks_like_id:
            return None, False
        candidates = self.metadata.find_by_id_prefix("sha256:" + hex_part)
        if len(candidates) > 1:
            raise InvalidArgument(f"image ID prefix {image!r} is ambiguous: it matches {len(candidates)} images")
        return (candidates[0] if candidates else None), True

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

    async def lookup(self, image: str) -> ImageRecord | None:
        """`find`, after taking in what a `pycri images` command changed."""
        await self._catch_up()
        return self.find(image)

    async def list(self, image_filter: str = "") -> list[api_pb2.Image]:
        await self._catch_up()
        if image_filter:
            found = self.find(image_filter)
            records = [found] if found is not None else []
        else:
            records = self.metadata.list()
        return [self.to_proto(record) for record in records]

    async def status(self, image: str, verbose: bool = False) -> tuple[api_pb2.Image, dict[str, str]] | None:
        record = await self.lookup(image)
        if record is None:
            return None
        info: dict[str, str] = {}
        if verbose:
            details = {"imageSpec": record.config, "chainIDs": record.chain_ids}
            info["info"] = json.dumps({**details, "manifestDigest": record.manifest_digest})
        return self.to_proto(record), info

    # -- removal and garbage collection ---------------------------------------

    async def remove(self, image: str) -> None:
        """Remove by ID, tag or digest; removing one tag keeps the image's other tags.
        Shielded: once its intent is written a removal runs to its end, or a later start
        would finish it after the image may have been pulled again."""
        await asyncio.shield(self._remove(image))

    async def _remove(self, image: str) -> None:
        async with self._removing:  # one intent per image at a time
            await self._catch_up()  # what a `pycri images` command changed
            record, by_id = self._locate(image)
            if record is None:
                return
            ref = None if by_id else self.parse(image)
            tag = ref.repo_tag if ref is not None and ref.repo_tag in record.tags and not ref.digest else None
            whole = tag is None or record.tags == [tag]
            plan = {
                "image_id": record.id,
                "tag": tag,
                "names": [*record.tags, *record.digests] if whole else [tag],
                "whole_image": whole,
                "blobs": record.blobs if whole else [],
                "chain_ids": record.chain_ids if whole else [],
            }
            intent = await self._intents.begin(REMOVE_IMAGE, record.id, plan)
            kill_point("remove_image.intent")
            removed = await self._remove_planned(intent)
        log.info("removed image", extra={"fields": {"image": image, "id": record.id, "whole_image": removed}})
        if removed:
            await self.collect_garbage()

    async def _remove_planned(self, intent: Intent) -> bool:
        """Drop what a removal intent names, finishing it in the same transaction; True if the image went."""
        image_id, tag = intent.plan["image_id"], intent.plan.get("tag")
        if tag:
            removed = await self.metadata.remove_tag(image_id, tag, intent)
        else:
            await self.metadata.remove(image_id, intent)
            removed = True
        self._changed()
        return removed

    async def collect_garbage(self) -> tuple[int, int]:
        """Delete blobs and snapshots nothing references; returns how many of each went. A
        daemon skips this while a `pycri images` command works: the next sweep does it."""
        lock = None
        if not self._command:
            lock = await asyncio.to_thread(lock_store, self._config.root_dir, True, False)
            if lock is None:
                log.info("garbage collection deferred: a `pycri images` command is at work")
                return 0, 0
        try:
            collected = await self._collector.sweep()
        finally:
            if lock is not None:
                unlock_store(lock)
        self._fs_usage = None
        return collected

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

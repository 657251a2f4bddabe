"""Image archives: OCI image layouts and `docker save` output as tar files, read in place.

The tar is indexed once (names, offsets, sizes); blobs are then read straight
from their offsets, so nothing is extracted to a temp dir and layers stream
into the content store. A gzip, bzip2 or xz compressed tar works too, at the
price of decompressing from its start for every blob read.

Every blob is verified: OCI blobs against their descriptors (manifests and
configs here, layers by the content store as they stream in). A `docker save`
archive has no manifest; one is made from manifest.json with the digests of
the files, and the config's rootfs.diff_ids are checked when layers unpack.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri.image.manifest import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MANIFEST_SIZE_MAX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    InvalidManifest,
    NoMatchingPlatform,
    Platform,
    compatible_platforms,
    digest_of,
    parse_manifest,
    select_manifest,
)
from pycri.image.reference import validate_digest
from pycri.image.source import ImageSource
from pycri.image.tarstream import GZIP_MAGIC, ZSTD_MAGIC

OCI_LAYOUT_FILE = "oci-layout"
OCI_INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
DOCKER_CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_MEDIA_TYPES = {
    "plain": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
CONFIG_SIZE_MAX = 8 * 1024 * 1024  # the default of images.limits.config_max_bytes
_OCI_LAYOUT_SIZE_MAX = 4096
# An index may name another index; deeper nesting than this is refused.
_NESTING_MAX = 4
_LINK_HOPS_MAX = 16
_CHUNK_SIZE = 1 << 20
# What reading a damaged archive (or a compressed one whose stream is corrupt) raises.
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
_DECOMPRESSORS: dict[bytes, Callable[[Path], io.BufferedIOBase]] = {
    GZIP_MAGIC: gzip.open,
    b"BZh": bz2.open,
    b"\xfd7zXZ\x00": lzma.open,
}


class ArchiveError(Exception):
    """An archive that cannot be imported; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class ArchivedImage:
    source: ImageSource
    # Names the archive gives the image: full references, or only tags ("1.36").
    names: tuple[str, ...]
    # Digests of the index.json entries that lead to the image (none in docker save archives).
    entry_digests: tuple[str, ...]


@dataclass(frozen=True)
class DockerSaveEntry:
    """One image of a `docker save` manifest.json: paths inside the archive, and its tags."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


@dataclass(frozen=True)
class _Member:
    name: str
    offset: int
    size: int


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None


def parse_docker_manifest(data: bytes) -> list[DockerSaveEntry]:
    """The images of a `docker save` manifest.json."""
    document = _json(data, DOCKER_MANIFEST_FILE)
    if not isinstance(document, list) or not document:
        raise ArchiveError(f"{DOCKER_MANIFEST_FILE} is not a non-empty list of images")
    entries = []
    for position, item in enumerate(document):
        what = f"{DOCKER_MANIFEST_FILE} entry {position}"
        if not isinstance(item, dict):
            raise ArchiveError(f"{what} is not an object")
        config, tags, layers = item.get("Config"), item.get("RepoTags") or [], item.get("Layers")
        if not isinstance(config, str) or not config:
            raise ArchiveError(f"{what} has no Config path")
        if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
            raise ArchiveError(f"{what} has RepoTags that are not a list of names")
        if not isinstance(layers, list) or not all(isinstance(layer, str) and layer for layer in layers):
            raise ArchiveError(f"{what} has Layers that are not a list of paths")
        entries.append(DockerSaveEntry(config, tuple(tags), tuple(layers)))
    return entries


def parse_oci_layout(data: bytes) -> None:
    """Accept an oci-layout file of layout version 1.x."""
    document = _json(data, OCI_LAYOUT_FILE)
    version = document.get("imageLayoutVersion") if isinstance(document, dict) else None
    if not isinstance(version, str) or version.split(".")[0] != "1":
        raise ArchiveError(f"{OCI_LAYOUT_FILE}: unsupported imageLayoutVersion {version!r} (want 1.x)")


def parse_oci_index(data: bytes) -> ImageIndex:
    """The index.json of an OCI layout."""
    try:
        parsed = parse_manifest(data, None)
    except InvalidManifest as exc:
        raise ArchiveError(f"{OCI_INDEX_FILE}: {exc}") from None
    if not isinstance(parsed, ImageIndex):
        raise ArchiveError(f"{OCI_INDEX_FILE} is not an image index")
    return parsed


def entry_names(entry: Descriptor) -> tuple[str, ...]:
    """Names an index.json entry gives: containerd's full name wins over the OCI ref name."""
    name = entry.annotations.get(ANNOTATION_CONTAINERD_NAME) or entry.annotations.get(ANNOTATION_REF_NAME)
    return (name,) if name else ()


def _normalised(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _named_digest(path: str) -> str | None:
    """The sha256 digest a path names, if any: blobs/sha256/<hex>, or <hex>.json as docker save
    names configs."""
    parts = _normalised(path).split("/")
    if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
        digest = "sha256:" + parts[2]
    elif len(parts) == 1 and parts[0].endswith(".json"):
        digest = "sha256:" + parts[0].removesuffix(".json")
    else:
        return None
    try:
        return validate_digest(digest)
    except ValueError:
        return None


class ImageArchive:
    """An archive file opened for reading; `images` holds its images for one platform."""

    def __init__(self, path: Path, platform: Platform, config_max_bytes: int = CONFIG_SIZE_MAX) -> None:
        """Index and parse the archive: blocking, run it in a thread."""
        self._path = path
        self._platform = platform
        self._config_max_bytes = config_max_bytes
        self._decompress: Callable[[Path], io.BufferedIOBase] | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._layers: dict[str, _Member] = {}
        self._skipped_platforms: list[str] = []
        self._index_members()
        try:
            self.images = self._read_images()
        except (*_DAMAGED, OSError) as exc:
            raise ArchiveError(f"cannot read the archive: {exc}") from None

    def _open(self) -> io.BufferedIOBase:
        return self._decompress(self._path) if self._decompress else open(self._path, "rb")  # noqa: SIM115

    def _index_members(self) -> None:
        try:
            with open(self._path, "rb") as raw:
                head = raw.read(8)
            openers = (opener for magic, opener in _DECOMPRESSORS.items() if head.startswith(magic))
            self._decompress = next(openers, None)
            with self._open() as stream, tarfile.open(fileobj=stream, mode="r:") as archive:
                for info in archive:
                    self._members[_normalised(info.name)] = info
        except _DAMAGED as exc:
            raise ArchiveError(f"not a tar archive: {exc}") from None
        except OSError as exc:
            raise ArchiveError(exc.strerror or str(exc)) from None

    def _member(self, path: str) -> _Member:
        """The regular file at path, following symlinks and hard links inside the archive."""
        name = _normalised(path)
        for _ in range(_LINK_HOPS_MAX):
            info = self._members.get(name)
            if info is None:
                raise ArchiveError(f"{path} is not in the archive")
            if info.issym():
                name = _normalised(posixpath.join(posixpath.dirname(name), info.linkname))
            elif info.islnk():
                name = _normalised(info.linkname)
            elif info.isreg() and not info.issparse():
                return _Member(name, info.offset_data, info.size)
            else:
                raise ArchiveError(f"{path} in the archive is not a regular file")
        raise ArchiveError(f"{path}: more than {_LINK_HOPS_MAX} links in a row")

    def _chunks(self, member: _Member) -> Generator[bytes, None, None]:
        """The member's bytes, from a file object of its own (so readers may run in parallel)."""
        with self._open() as stream:
            stream.seek(member.offset)
            remaining = member.size
            while remaining:
                chunk = stream.read(min(_CHUNK_SIZE, remaining))
                if not chunk:
                    raise ArchiveError(f"the archive ends inside {member.name}")
                remaining -= len(chunk)
                yield chunk

    def _read(self, member: _Member, limit: int) -> bytes:
        if member.size > limit:
            raise ArchiveError(f"{member.name} is {member.size} bytes, more than the {limit} allowed")
        return b"".join(self._chunks(member))

    def _read_blob(self, descriptor: Descriptor, limit: int) -> bytes:
        """A blob of the OCI layout, verified against its descriptor."""
        algorithm, _, hex_part = descriptor.digest.partition(":")
        data = self._read(self._member(f"blobs/{algorithm}/{hex_part}"), limit)
        actual = digest_of(data, algorithm)
        if actual != descriptor.digest or len(data) != descriptor.size:
            raise ArchiveError(
                f"blob {descriptor.digest} ({descriptor.size} bytes) holds {len(data)} bytes of digest {actual}"
            )
        return data

    def _read_images(self) -> list[ArchivedImage]:
        if OCI_INDEX_FILE in self._members and OCI_LAYOUT_FILE in self._members:
            images = self._read_oci_layout()
        elif DOCKER_MANIFEST_FILE in self._members:
            images = self._read_docker_save()
        else:
            raise ArchiveError(
                "unknown format: neither an OCI image layout (oci-layout, index.json)"
                " nor a docker save archive (manifest.json)"
            )
        if not images and self._skipped_platforms:
            available = ", ".join(sorted(set(self._skipped_platforms)))
            raise ArchiveError(f"no image for platform {self._platform} (the archive has {available})")
        if not images:
            raise ArchiveError("the archive holds no image")
        return images

    # -- OCI image layout -------------------------------------------------------

    def _read_oci_layout(self) -> list[ArchivedImage]:
        parse_oci_layout(self._read(self._member(OCI_LAYOUT_FILE), _OCI_LAYOUT_SIZE_MAX))
        index = parse_oci_index(self._read(self._member(OCI_INDEX_FILE), MANIFEST_SIZE_MAX))
        by_manifest: dict[str, ArchivedImage] = {}
        for entry in index.manifests:
            if entry.media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
                continue  # an artifact, not an image
            if entry.platform is not None and entry.platform not in compatible_platforms(self._platform):
                self._skipped_platforms.append(str(entry.platform))
                continue
            chosen = self._choose_manifest(entry, {}, 0)
            if chosen is None:
                continue
            source = self._oci_source(*chosen)
            image = ArchivedImage(source, entry_names(entry), (entry.digest,))
            known = by_manifest.get(source.manifest_digest)
            if known is not None:  # one image under several entries: all their names
                indexes = {**known.source.indexes, **source.indexes}
                image = ArchivedImage(
                    dataclasses.replace(source, indexes=indexes),
                    tuple(dict.fromkeys(known.names + image.names)),
                    tuple(dict.fromkeys(known.entry_digests + image.entry_digests)),
                )
            by_manifest[source.manifest_digest] = image
        return list(by_manifest.values())

    def _choose_manifest(
        self, descriptor: Descriptor, indexes: dict[str, bytes], depth: int
    ) -> tuple[Descriptor, bytes, dict[str, bytes]] | None:
        """The image manifest for this platform that descriptor leads to, with the indexes on
        the way; None when an index has nothing for this platform."""
        data = self._read_blob(descriptor, MANIFEST_SIZE_MAX)
        try:
            parsed = parse_manifest(data, descriptor.media_type)
        except InvalidManifest as exc:
            raise ArchiveError(f"manifest {descriptor.digest}: {exc}") from None
        if isinstance(parsed, ImageManifest):
            return descriptor, data, indexes
        if depth >= _NESTING_MAX:
            raise ArchiveError(f"index {descriptor.digest}: indexes nested more than {_NESTING_MAX} deep")
        try:
            chosen = select_manifest(parsed, self._platform)
        except NoMatchingPlatform:
            self._skipped_platforms.extend(str(entry.platform) for entry in parsed.manifests if entry.platform)
            return None
        return self._choose_manifest(chosen, {**indexes, descriptor.digest: data}, depth + 1)

    def _oci_source(self, descriptor: Descriptor, data: bytes, indexes: dict[str, bytes]) -> ImageSource:
        manifest = parse_manifest(data, descriptor.media_type)
        assert isinstance(manifest, ImageManifest)
        config_bytes = self._read_blob(manifest.config, self._config_max_bytes)
        for layer in manifest.layers:
            algorithm, _, hex_part = layer.digest.partition(":")
            member = self._member(f"blobs/{algorithm}/{hex_part}")
            if member.size != layer.size:
                raise ArchiveError(f"layer {layer.digest} is {member.size} bytes, the manifest says {layer.size}")
            self._layers[layer.digest] = member
        return ImageSource(
            manifest_digest=descriptor.digest,
            manifest=data,
            config=manifest.config,
            config_bytes=config_bytes,
            layers=manifest.layers,
            open_layer=self.open_layer,
            indexes=indexes,
        )

    # -- docker save --------------------------------------------------------------

    def _read_docker_save(self) -> list[ArchivedImage]:
        entries = parse_docker_manifest(self._read(self._member(DOCKER_MANIFEST_FILE), MANIFEST_SIZE_MAX))
        return [self._docker_image(entry) for entry in entries]

    def _docker_image(self, entry: DockerSaveEntry) -> ArchivedImage:
        config_bytes = self._read(self._member(entry.config), self._config_max_bytes)
        config = Descriptor(DOCKER_CONFIG_MEDIA_TYPE, digest_of(config_bytes), len(config_bytes))
        named = _named_digest(entry.config)
        if named is not None and named != config.digest:
            raise ArchiveError(f"{entry.config} has digest {config.digest}, its name says {named}")
        layers = tuple(self._docker_layer(path) for path in entry.layers)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "config": _descriptor_json(config),
            "layers": [_descriptor_json(layer) for layer in layers],
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        source = ImageSource(
            manifest_digest=digest_of(manifest_bytes),
            manifest=manifest_bytes,
            config=config,
            config_bytes=config_bytes,
            layers=layers,
            open_layer=self.open_layer,
        )
        return ArchivedImage(source, entry.repo_tags, ())

    def _docker_layer(self, path: str) -> Descriptor:
        """A descriptor for a layer file; its digest is computed unless its name gives it
        (the content store verifies it either way)."""
        member = self._member(path)
        digest = _named_digest(path) if _normalised(path).startswith("blobs/") else None
        hasher = hashlib.sha256()
        head = b""
        for chunk in self._chunks(member):
            head = head or chunk[:4]
            if digest is not None:
                break
            hasher.update(chunk)
        digest = digest or "sha256:" + hasher.hexdigest()
        compression = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head.startswith(ZSTD_MAGIC) else "plain"
        self._layers[digest] = member
        return Descriptor(DOCKER_LAYER_MEDIA_TYPES[compression], digest, member.size)

    # -- layers ---------------------------------------------------------------------

    async def open_layer(self, layer: Descriptor) -> AsyncIterator[bytes]:
        """The bytes of a layer blob, each chunk read in a thread."""
        chunks = self._chunks(self._layers[layer.digest])
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield chunk
        finally:
            # After a cancellation the last read may still run in its thread ("generator already
            # executing"); the generator then closes its file once it is dropped.
            with contextlib.suppress(ValueError):
                chunks.close()


def _descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    return {"mediaType": descriptor.media_type, "size": descriptor.size, "digest": descriptor.digest}

"""OCI and Docker schema 2 manifests and indexes: parsing, digests and platform selection."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycri.image.reference import validate_digest

if TYPE_CHECKING:
    from hashlib import _Hash

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)

MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
# Preference order for the Accept header of manifest requests.
ACCEPTED_MANIFEST_MEDIA_TYPES = (
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
)

CONFIG_MEDIA_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
FOREIGN_LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
LAYER_MEDIA_TYPES = FOREIGN_LAYER_MEDIA_TYPES | {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}

# Registries refuse larger manifests too; this bounds what one response can make us hold.
MANIFEST_SIZE_MAX = 4 * 1024 * 1024


class InvalidManifest(ValueError):
    """A manifest or index that is malformed or not a container image."""


class NoMatchingPlatform(LookupError):
    """An index has no manifest for the wanted platform."""


@dataclass(frozen=True)
class Platform:
    """A normalised platform: ``os``, ``architecture`` and ``variant`` ("" when the default)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


def normalize_platform(os_name: str, architecture: str, variant: str = "") -> Platform:
    """Normalise names and variants the way containerd does (x86_64 -> amd64, arm64/v8 -> arm64, ...)."""
    os_name = os_name.lower()
    if os_name == "macos":
        os_name = "darwin"
    architecture, variant = architecture.lower(), variant.lower()
    if architecture in ("i386", "i486", "i586", "i686"):
        architecture = "386"
    elif architecture in ("x86_64", "x86-64"):
        architecture = "amd64"
    elif architecture == "aarch64":
        architecture = "arm64"
    elif architecture == "armhf":
        architecture, variant = "arm", "v7"
    elif architecture == "armel":
        architecture, variant = "arm", "v6"
    if variant.isascii() and variant.isdigit():
        variant = f"v{variant}"
    if (architecture == "amd64" and variant == "v1") or (architecture == "arm64" and variant in ("v8", "v8.0")):
        variant = ""
    elif architecture == "arm" and not variant:
        variant = "v7"
    return Platform(os_name, architecture, variant)


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` into a normalised Platform."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r}: want os/arch[/variant], e.g. linux/amd64")
    return normalize_platform(*parts)


def compatible_platforms(wanted: Platform) -> list[Platform]:
    """Platforms that can run on ``wanted``, best first (arm/v7 also runs v6 and v5 images, ...)."""
    candidates = [wanted]
    version = _variant_number(wanted.variant)
    if wanted.architecture == "amd64" and version is not None:
        candidates += [Platform(wanted.os, "amd64", f"v{n}" if n > 1 else "") for n in range(version - 1, 0, -1)]
    elif wanted.architecture == "arm" and version is not None:
        candidates += [Platform(wanted.os, "arm", f"v{n}") for n in range(version - 1, 4, -1)]
    elif wanted.architecture == "arm64":
        if wanted.variant:
            candidates.append(Platform(wanted.os, "arm64"))
        candidates += [Platform(wanted.os, "arm", f"v{n}") for n in range(8, 4, -1)]
    return candidates


def select_manifest(index: ImageIndex, wanted: Platform) -> Descriptor:
    """The index entry that best fits ``wanted``; entries without a platform are a last resort."""
    preference = compatible_platforms(wanted)
    best: tuple[int, Descriptor] | None = None
    for descriptor in index.manifests:
        if descriptor.media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
            continue
        if descriptor.platform is None:
            rank = len(preference)
        elif descriptor.platform in preference:
            rank = preference.index(descriptor.platform)
        else:
            continue
        if best is None or rank < best[0]:
            best = (rank, descriptor)
    if best is None:
        available = ", ".join(str(d.platform) for d in index.manifests if d.platform is not None) or "none"
        raise NoMatchingPlatform(f"no manifest for platform {wanted} in the index (available: {available})")
    return best[1]


def parse_manifest(data: bytes, content_type: str | None) -> ImageManifest | ImageIndex:
    """Parse a manifest or index; ``content_type`` is the registry's Content-Type header, if any."""
    if len(data) > MANIFEST_SIZE_MAX:
        raise InvalidManifest(f"manifest of {len(data)} bytes is larger than {MANIFEST_SIZE_MAX}")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidManifest(f"manifest is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifest("manifest is not a JSON object")
    media_type = _media_type_of(document, content_type)
    if media_type in INDEX_MEDIA_TYPES:
        entries = _field(document, "manifests", list)
        return ImageIndex(media_type, tuple(_descriptor(entry, "index entry") for entry in entries))
    config = _descriptor(_field(document, "config", dict), "config")
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise InvalidManifest(f"not a container image: config media type {config.media_type!r}")
    layers = tuple(_descriptor(layer, "layer") for layer in _field(document, "layers", list))
    for layer in layers:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise InvalidManifest(f"unsupported layer media type {layer.media_type!r} ({layer.digest})")
    return ImageManifest(media_type, config, layers)


def new_hasher(digest: str) -> _Hash:
    """A hashlib object for the algorithm of ``digest`` (sha256, sha384 or sha512)."""
    return hashlib.new(validate_digest(digest).partition(":")[0])


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _media_type_of(document: dict[str, Any], content_type: str | None) -> str:
    # The mediaType field is covered by the digest; the header is only the registry's word.
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidManifest("manifest field 'mediaType' is not a string")
    header = (content_type or "").partition(";")[0].strip().lower()
    known = MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES
    if (
        document.get("schemaVersion") == 1
        or declared in DOCKER_SCHEMA1_MEDIA_TYPES
        or (not declared and header in DOCKER_SCHEMA1_MEDIA_TYPES)
    ):
        raise InvalidManifest("Docker schema 1 manifests are not supported; push the image again with schema 2")
    if document.get("schemaVersion") != 2:
        raise InvalidManifest(f"unsupported manifest schemaVersion {document.get('schemaVersion')!r}")
    if declared:
        media_type = declared
    elif header in known:
        media_type = header
    elif "manifests" in document:
        media_type = MEDIA_TYPE_OCI_INDEX
    else:
        media_type = MEDIA_TYPE_OCI_MANIFEST
    if media_type not in known:
        raise InvalidManifest(f"unsupported manifest media type {media_type!r}")
    return media_type


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    if not isinstance(value, kind):
        raise InvalidManifest(f"manifest field {name!r} is missing or not a {kind.__name__}")
    return value


def _descriptor(entry: Any, what: str) -> Descriptor:
    if not isinstance(entry, dict):
        raise InvalidManifest(f"{what} descriptor is not a JSON object")
    media_type, size = entry.get("mediaType"), entry.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifest(f"{what} descriptor has no mediaType")
    try:
        digest = validate_digest(entry.get("digest"))
    except ValueError:
        raise InvalidManifest(f"{what} descriptor has an invalid digest {entry.get('digest')!r}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"{what} descriptor {digest} has an invalid size {size!r}")
    urls = entry.get("urls") or []
    annotations = entry.get("annotations") or {}
    if not (isinstance(urls, list) and all(isinstance(url, str) for url in urls)):
        raise InvalidManifest(f"{what} descriptor {digest} has invalid urls")
    if not (isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())):
        raise InvalidManifest(f"{what} descriptor {digest} has invalid annotations")
    return Descriptor(media_type, digest, size, tuple(urls), dict(annotations), _platform(entry, digest))


def _platform(entry: dict[str, Any], digest: str) -> Platform | None:
    platform = entry.get("platform")
    if platform is None:
        return None
    if not isinstance(platform, dict):
        raise InvalidManifest(f"index entry {digest} has an invalid platform")
    os_name, architecture = platform.get("os"), platform.get("architecture")
    variant = platform.get("variant") or ""
    if not (isinstance(os_name, str) and isinstance(architecture, str) and isinstance(variant, str)):
        raise InvalidManifest(f"index entry {digest} has an invalid platform {platform!r}")
    return normalize_platform(os_name, architecture, variant)


def _variant_number(variant: str) -> int | None:
    number = variant.removeprefix("v")
    return int(number) if number.isascii() and number.isdigit() else None

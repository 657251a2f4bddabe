"""Build OCI and Docker schema2 images in memory and push them to a registry over plain HTTP.

Everything is deterministic: fixed mtimes and timestamps, entries written in the order given
(the busybox rootfs is sorted), gzip headers without time or name. Paths in layer entries are
written exactly as given, never cleaned, so tests can build hostile layers (`..`, absolute paths,
symlink tricks).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import zstandard

from tests.support.registry import basic_auth_header, loopback_opener

Compression = Literal["gzip", "zstd", "none"]
ImageFormat = Literal["oci", "docker"]
RawMember = tuple[tarfile.TarInfo, bytes | None]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_TYPES: Mapping[Compression, str] = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
DOCKER_LAYER_TYPES: Mapping[Compression, str] = {
    "none": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

FIXED_MTIME = 1_700_000_000
FIXED_CREATED = "2023-11-14T22:13:20Z"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PushError(RuntimeError):
    pass


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Entry:
    """One tar member. `path` and `linkname` go into the archive verbatim."""

    path: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, str] = field(default_factory=dict)
    mtime: int = FIXED_MTIME

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.path)
        info.type = self.type
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        info.size = len(self.data) if self.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
        info.pax_headers = {f"SCHILY.xattr.{name}": value for name, value in self.xattrs.items()}
        return info


def file_entry(
    path: str,
    data: bytes,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    xattrs: Mapping[str, str] | None = None,
) -> Entry:
    return Entry(path, tarfile.REGTYPE, data, mode, uid, gid, xattrs=dict(xattrs or {}))


def dir_entry(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid)


def symlink_entry(path: str, target: str) -> Entry:
    return Entry(path, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink_entry(path: str, target: str) -> Entry:
    """`target` is the path of another member, as written in the archive."""
    return Entry(path, tarfile.LNKTYPE, linkname=target)


def char_device_entry(path: str, major: int, minor: int, mode: int = 0o666) -> Entry:
    return Entry(path, tarfile.CHRTYPE, mode=mode, devmajor=major, devminor=minor)


def whiteout_entry(path: str) -> Entry:
    """Deletes `path` from the layers below."""
    parent, _, name = path.rpartition("/")
    return Entry(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque_entry(directory: str) -> Entry:
    """Hides everything the layers below have in `directory`."""
    return Entry(f"{directory.rstrip('/')}/.wh..wh..opq")


@dataclass(frozen=True)
class Layer:
    data: bytes
    digest: str
    diff_id: str
    media_type: str
    size: int
    compression: Compression


def tar_archive(entries: Iterable[Entry | RawMember]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info, data = (entry.tarinfo(), entry.data) if isinstance(entry, Entry) else entry
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def make_layer(entries: Iterable[Entry | RawMember], compression: Compression = "gzip") -> Layer:
    """A layer blob from entries (or raw (TarInfo, data) pairs) in the order given."""
    tar_bytes = tar_archive(entries)
    blob = compress(tar_bytes, compression)
    return Layer(
        data=blob,
        digest=sha256_digest(blob),
        diff_id=sha256_digest(tar_bytes),
        media_type=OCI_LAYER_TYPES[compression],
        size=len(blob),
        compression=compression,
    )


@dataclass(frozen=True)
class Image:
    format: ImageFormat
    platform: str
    layers: tuple[Layer, ...]
    config: bytes
    config_digest: str
    config_media_type: str
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    @property
    def size(self) -> int:
        """Bytes of manifest, config and compressed layers (what containerd reports as image size)."""
        return len(self.manifest) + len(self.config) + sum(layer.size for layer in self.layers)

    @property
    def config_json(self) -> dict[str, Any]:
        return dict(json.loads(self.config))


def _platform_fields(platform: str) -> dict[str, str]:
    os_name, architecture, *variant = platform.split("/")
    fields = {"architecture": architecture, "os": os_name}
    if variant:
        fields["variant"] = variant[0]
    return fields


def _layer_media_type(layer: Layer, image_format: ImageFormat) -> str:
    if image_format == "oci":
        return layer.media_type
    if layer.compression not in DOCKER_LAYER_TYPES:
        raise ValueError(f"Docker schema2 has no media type for {layer.compression} layers")
    return DOCKER_LAYER_TYPES[layer.compression]


def make_image(
    layers: Sequence[Layer],
    config_overrides: Mapping[str, Any] | None = None,
    *,
    image_format: ImageFormat = "oci",
    platform: str = "linux/amd64",
) -> Image:
    """An image of `layers`; `config_overrides` are merged into the runtime config (Cmd, Env, User...).

    `platform` is "os/architecture[/variant]".
    """
    runtime_config = {"Env": [DEFAULT_PATH_ENV], **(config_overrides or {})}
    config = {
        "created": FIXED_CREATED,
        **_platform_fields(platform),
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": FIXED_CREATED, "created_by": "pycri test image"} for _ in layers],
    }
    config_bytes = _compact_json(config)
    config_media_type = OCI_CONFIG if image_format == "oci" else DOCKER_CONFIG
    manifest_media_type = OCI_MANIFEST if image_format == "oci" else DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_media_type,
        "config": {
            "mediaType": config_media_type,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": _layer_media_type(layer, image_format), "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest_bytes = _compact_json(manifest)
    return Image(
        format=image_format,
        platform=platform,
        layers=tuple(layers),
        config=config_bytes,
        config_digest=sha256_digest(config_bytes),
        config_media_type=config_media_type,
        manifest=manifest_bytes,
        manifest_digest=sha256_digest(manifest_bytes),
        manifest_media_type=manifest_media_type,
    )


@dataclass(frozen=True)
class Index:
    format: ImageFormat
    images: Mapping[str, Image]
    manifest: bytes
    digest: str
    media_type: str


def make_index(images: Mapping[str, Image], *, image_format: ImageFormat = "oci") -> Index:
    """An OCI image index or Docker manifest list; keys are "os/architecture[/variant]"."""
    media_type = OCI_INDEX if image_format == "oci" else DOCKER_MANIFEST_LIST
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": len(image.manifest),
                "platform": _platform_fields(platform),
            }
            for platform, image in images.items()
        ],
    }
    manifest_bytes = _compact_json(index)
    return Index(
        format=image_format,
        images=dict(images),
        manifest=manifest_bytes,
        digest=sha256_digest(manifest_bytes),
        media_type=media_type,
    )


def _request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> tuple[int, Mapping[str, str]]:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if auth is not None:
        request.add_header("Authorization", basic_auth_header(auth))
    try:
        with loopback_opener.open(request, timeout=60) as response:
            response.read()
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        if method == "HEAD" and error.code == 404:
            return 404, error.headers
        raise PushError(f"{method} {url}: {error.code} {error.read().decode(errors='replace')}") from error


def push_blob(registry_url: str, repo: str, data: bytes, auth: tuple[str, str] | None = None) -> str:
    """Monolithic upload (POST then PUT), skipped when the registry has the blob already."""
    digest = sha256_digest(data)
    blob_url = f"{registry_url}/v2/{repo}/blobs/{digest}"
    if _request("HEAD", blob_url, auth=auth)[0] == 200:
        return digest
    _, headers = _request("POST", f"{registry_url}/v2/{repo}/blobs/uploads/", body=b"", auth=auth)
    upload_url = urllib.parse.urljoin(f"{registry_url}/", headers["Location"])
    separator = "&" if "?" in upload_url else "?"
    _request(
        "PUT",
        f"{upload_url}{separator}digest={urllib.parse.quote(digest)}",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth,
    )
    return digest


def push_manifest(
    registry_url: str,
    repo: str,
    reference: str,
    manifest: bytes,
    media_type: str,
    auth: tuple[str, str] | None = None,
) -> str:
    """PUT a manifest under a tag or digest; returns the digest the registry reports."""
    _, headers = _request(
        "PUT",
        f"{registry_url}/v2/{repo}/manifests/{reference}",
        body=manifest,
        headers={"Content-Type": media_type},
        auth=auth,
    )
    return headers["Docker-Content-Digest"]


def push_image(registry_url: str, repo: str, tag: str | None, image: Image, auth: tuple[str, str] | None = None) -> str:
    """Pushes layers, config and manifest (by tag, or by digest when `tag` is None)."""
    for layer in image.layers:
        push_blob(registry_url, repo, layer.data, auth)
    push_blob(registry_url, repo, image.config, auth)
    reference = tag or image.manifest_digest
    return push_manifest(registry_url, repo, reference, image.manifest, image.manifest_media_type, auth)


def push_index(registry_url: str, repo: str, tag: str | None, index: Index, auth: tuple[str, str] | None = None) -> str:
    """Pushes every platform's image by digest, then the index itself."""
    for image in index.images.values():
        push_image(registry_url, repo, None, image, auth)
    reference = tag or index.digest
    return push_manifest(registry_url, repo, reference, index.manifest, index.media_type, auth)


def fetch_manifest(
    registry_url: str, repo: str, reference: str, auth: tuple[str, str] | None = None
) -> tuple[bytes, str, str]:
    """GET a manifest accepting every type above: (body, media type, Docker-Content-Digest)."""
    request = urllib.request.Request(
        f"{registry_url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )
    if auth is not None:
        request.add_header("Authorization", basic_auth_header(auth))
    with loopback_opener.open(request, timeout=60) as response:
        return response.read(), response.headers["Content-Type"], response.headers["Docker-Content-Digest"]

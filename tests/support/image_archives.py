"""Write images built with tests.support.oci_images as OCI image layout tars and `docker save` tars.

Archives are first a mapping of member path to content, so a test can corrupt or drop a
member before writing the tar.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.oci_images import FIXED_MTIME, Image, Index

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class Symlink:
    """A symlink member; `target` is relative to the link's directory, as docker save writes them."""

    target: str


Member = bytes | Symlink


@dataclass(frozen=True)
class LayoutEntry:
    """One index.json entry: an image or an index, with its annotations."""

    target: Image | Index
    annotations: Mapping[str, str] = field(default_factory=dict)


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def blob_path(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"blobs/{algorithm}/{hex_part}"


def _image_blobs(image: Image) -> dict[str, bytes]:
    blobs = {blob_path(layer.digest): layer.data for layer in image.layers}
    blobs[blob_path(image.config_digest)] = image.config
    blobs[blob_path(image.manifest_digest)] = image.manifest
    return blobs


def oci_layout_members(entries: Sequence[LayoutEntry]) -> dict[str, Member]:
    members: dict[str, Member] = {"oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"})}
    descriptors = []
    for entry in entries:
        target = entry.target
        if isinstance(target, Index):
            for image in target.images.values():
                members.update(_image_blobs(image))
            members[blob_path(target.digest)] = target.manifest
            descriptor = {"mediaType": target.media_type, "digest": target.digest, "size": len(target.manifest)}
        else:
            members.update(_image_blobs(target))
            descriptor = {
                "mediaType": target.manifest_media_type,
                "digest": target.manifest_digest,
                "size": len(target.manifest),
            }
        if entry.annotations:
            descriptor["annotations"] = dict(entry.annotations)
        descriptors.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descriptors}
    members["index.json"] = _json_bytes(index)
    return members


def docker_save_members(images: Sequence[tuple[Image, Sequence[str]]]) -> dict[str, Member]:
    """The layout of `docker save` before Docker 25: <config hex>.json, <layer id>/layer.tar,
    manifest.json. Layer files hold each layer's blob as built (plain or gzip). A layer that
    two images share is written once."""
    members: dict[str, Member] = {}
    manifest = []
    for image, tags in images:
        config_name = image.config_digest.removeprefix("sha256:") + ".json"
        members[config_name] = image.config
        layer_paths = []
        for layer in image.layers:
            layer_dir = layer.digest.removeprefix("sha256:")
            members[f"{layer_dir}/VERSION"] = b"1.0"
            members[f"{layer_dir}/layer.tar"] = layer.data
            layer_paths.append(f"{layer_dir}/layer.tar")
        manifest.append({"Config": config_name, "RepoTags": list(tags) or None, "Layers": layer_paths})
    members["manifest.json"] = _json_bytes(manifest)
    return members


def write_tar(path: Path, members: Mapping[str, Member], gzipped: bool = False) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directories = sorted({name.rsplit("/", 1)[0] for name in members if "/" in name})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
            archive.addfile(info)
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.mtime = FIXED_MTIME
            if isinstance(content, Symlink):
                info.type, info.linkname = tarfile.SYMTYPE, content.target
                archive.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                archive.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
    return path

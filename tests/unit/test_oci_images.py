from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from tests.support.busybox_images import BUSYBOX, busybox_rootfs_entries, layered_image_layers
from tests.support.oci_images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_TYPES,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TYPES,
    OCI_MANIFEST,
    Compression,
    ImageFormat,
    Layer,
    char_device_entry,
    dir_entry,
    file_entry,
    hardlink_entry,
    make_image,
    make_index,
    make_layer,
    opaque_entry,
    symlink_entry,
    whiteout_entry,
)

pytestmark = pytest.mark.unit

needs_busybox = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def members(layer: Layer) -> dict[str, tarfile.TarInfo]:
    tar_bytes = decompress(layer)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        return {info.name: info for info in archive.getmembers()}


def decompress(layer: Layer) -> bytes:
    if layer.compression == "gzip":
        return gzip.decompress(layer.data)
    if layer.compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(layer.data)
    return layer.data


def read_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    reader = archive.extractfile(info)
    assert reader is not None
    return reader.read()


def small_layer(compression: Compression = "gzip") -> Layer:
    return make_layer([dir_entry("etc"), file_entry("etc/hello", b"hello\n")], compression)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_digests_match_blob_and_uncompressed_tar(compression: Compression) -> None:
    layer = small_layer(compression)

    assert layer.digest == sha256(layer.data)
    assert layer.diff_id == sha256(decompress(layer))
    assert layer.size == len(layer.data)
    assert layer.media_type == OCI_LAYER_TYPES[compression]


def test_layers_are_byte_for_byte_reproducible() -> None:
    assert small_layer().data == small_layer().data
    assert small_layer("zstd").data == small_layer("zstd").data


def test_entries_keep_hostile_paths_verbatim() -> None:
    layer = make_layer(
        [
            file_entry("../escape", b"x"),
            file_entry("/absolute", b"y"),
            symlink_entry("link", "../../../etc"),
            file_entry("link/passwd", b"z"),
            hardlink_entry("hard", "/etc/shadow"),
        ]
    )

    found = members(layer)
    assert list(found) == ["../escape", "/absolute", "link", "link/passwd", "hard"]
    assert found["link"].linkname == "../../../etc"
    assert found["hard"].islnk() and found["hard"].linkname == "/etc/shadow"


def test_entry_kinds_modes_owners_and_xattrs_round_trip() -> None:
    layer = make_layer(
        [
            dir_entry("tmp", mode=0o1777),
            file_entry("tool", b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1001, xattrs={"user.note": "kept"}),
            char_device_entry("null", 1, 3),
            whiteout_entry("data/gone"),
            opaque_entry("opq/"),
        ]
    )

    found = members(layer)
    assert found["tmp"].isdir() and found["tmp"].mode == 0o1777
    assert (found["tool"].mode, found["tool"].uid, found["tool"].gid) == (0o4755, 1000, 1001)
    assert found["tool"].pax_headers["SCHILY.xattr.user.note"] == "kept"
    assert found["null"].ischr() and (found["null"].devmajor, found["null"].devminor) == (1, 3)
    assert "data/.wh.gone" in found
    assert "opq/.wh..wh..opq" in found


def test_raw_tarinfo_members_are_written_as_given() -> None:
    info = tarfile.TarInfo("../../raw")
    info.size = 3
    info.mode = 0o600

    found = members(make_layer([(info, b"raw")]))

    assert found["../../raw"].size == 3 and found["../../raw"].mode == 0o600


@given(
    st.lists(
        # Python's tar reader drops a trailing "/" from pax paths, so none is generated.
        st.tuples(
            st.text(alphabet="ab./é-", min_size=1, max_size=120).filter(lambda p: not p.endswith("/")),
            st.binary(max_size=64),
        ),
        max_size=8,
    )
)
def test_any_file_entries_round_trip(files: list[tuple[str, bytes]]) -> None:
    layer = make_layer([file_entry(path, data) for path, data in files], "none")

    with tarfile.open(fileobj=io.BytesIO(layer.data)) as archive:
        read_back = [(info.name, read_member(archive, info)) for info in archive.getmembers()]
    assert read_back == files
    assert layer.diff_id == layer.digest == sha256(layer.data)


def test_oci_image_manifest_points_at_config_and_layers() -> None:
    layers = [small_layer(), small_layer("zstd")]
    image = make_image(layers, {"Cmd": ["sh"], "User": "pycri"}, platform="linux/arm64/v8")

    manifest = json.loads(image.manifest)
    config = json.loads(image.config)
    assert image.manifest_digest == sha256(image.manifest)
    assert image.config_digest == sha256(image.config)
    assert manifest["mediaType"] == image.manifest_media_type == OCI_MANIFEST
    assert manifest["config"] == {"mediaType": OCI_CONFIG, "digest": image.config_digest, "size": len(image.config)}
    assert manifest["layers"] == [
        {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers
    ]
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["config"]["Cmd"] == ["sh"] and config["config"]["User"] == "pycri"
    assert config["config"]["Env"][0].startswith("PATH=")
    assert image.size == len(image.manifest) + len(image.config) + sum(layer.size for layer in layers)


def test_docker_image_uses_schema2_media_types() -> None:
    image = make_image([small_layer(), small_layer("none")], image_format="docker")

    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        DOCKER_LAYER_TYPES["gzip"],
        DOCKER_LAYER_TYPES["none"],
    ]


def test_docker_image_refuses_zstd_layers() -> None:
    with pytest.raises(ValueError, match="zstd"):
        make_image([small_layer("zstd")], image_format="docker")


def test_images_are_reproducible() -> None:
    first = make_image([small_layer()], {"Cmd": ["sh"]})
    second = make_image([small_layer()], {"Cmd": ["sh"]})

    assert first.manifest == second.manifest


@pytest.mark.parametrize(("image_format", "media_type"), [("oci", OCI_INDEX), ("docker", DOCKER_MANIFEST_LIST)])
def test_index_lists_each_platform(image_format: ImageFormat, media_type: str) -> None:
    amd64 = make_image([small_layer()], image_format=image_format)
    arm64 = make_image([small_layer()], image_format=image_format, platform="linux/arm64/v8")

    index = make_index({"linux/amd64": amd64, "linux/arm64/v8": arm64}, image_format=image_format)

    body = json.loads(index.manifest)
    assert index.digest == sha256(index.manifest)
    assert body["mediaType"] == index.media_type == media_type
    assert body["manifests"] == [
        {
            "mediaType": amd64.manifest_media_type,
            "digest": amd64.manifest_digest,
            "size": len(amd64.manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
        },
        {
            "mediaType": arm64.manifest_media_type,
            "digest": arm64.manifest_digest,
            "size": len(arm64.manifest),
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        },
    ]


@needs_busybox
def test_busybox_rootfs_has_shell_users_and_sorted_entries() -> None:
    entries = busybox_rootfs_entries()
    by_path = {entry.path: entry for entry in entries}

    assert [entry.path for entry in entries] == sorted(by_path)
    assert by_path["bin/busybox"].data == BUSYBOX.read_bytes()
    assert by_path["bin/sh"].linkname == "busybox"
    assert by_path["tmp"].mode == 0o1777
    assert b"pycri:x:1000:1000:" in by_path["etc/passwd"].data
    assert b"pycrisupp:x:1001:pycri" in by_path["etc/group"].data
    assert "etc/pycri-image" not in by_path


@needs_busybox
def test_busybox_rootfs_name_marker_adds_a_file() -> None:
    by_path = {entry.path: entry for entry in busybox_rootfs_entries("zstd")}

    assert by_path["etc/pycri-image"].data == b"zstd\n"


@needs_busybox
def test_layered_image_whiteouts_and_links() -> None:
    _, second, third = layered_image_layers()

    assert {"data/keep", "data/gone", "opq/old"} <= set(members(second))
    found = members(third)
    assert {"data/.wh.gone", "opq/.wh..wh..opq", "opq/new"} <= set(found)
    assert found["data/three-hardlink"].islnk() and found["data/three-hardlink"].linkname == "data/three"
    assert found["data/keep-symlink"].issym() and found["data/keep-symlink"].linkname == "keep"

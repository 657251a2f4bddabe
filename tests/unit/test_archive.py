"""Reading OCI image layout tars and `docker save` tars, and naming what they hold."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycri.errors import InvalidArgument
from pycri.image.archive import (
    ArchivedImage,
    ArchiveError,
    ImageArchive,
    entry_names,
    parse_docker_manifest,
    parse_oci_index,
    parse_oci_layout,
)
from pycri.image.importer import assign_names, is_bare_tag
from pycri.image.manifest import Descriptor, parse_platform
from tests.support.busybox_images import arch_marker_layer, busybox_layer
from tests.support.image_archives import (
    CONTAINERD_NAME,
    REF_NAME,
    LayoutEntry,
    Symlink,
    blob_path,
    docker_save_members,
    oci_layout_members,
    write_tar,
)
from tests.support.oci_images import Image, file_entry, make_image, make_index, make_layer

pytestmark = pytest.mark.unit

AMD64 = parse_platform("linux/amd64")
ARM64 = parse_platform("linux/arm64")


def small_image(marker: str, compression: str = "gzip", **settings: object) -> Image:
    layer = make_layer([file_entry("etc/marker", f"{marker}\n".encode())], compression)  # type: ignore[arg-type]
    return make_image([layer], {"Labels": {"t": marker}}, **settings)  # type: ignore[arg-type]


def read_layer(archive: ImageArchive, layer: Descriptor) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in archive.open_layer(layer)])

    return asyncio.run(collect())


def only_image(archive: ImageArchive) -> ArchivedImage:
    assert len(archive.images) == 1
    return archive.images[0]


# -- JSON parsing -----------------------------------------------------------------


def test_docker_manifest_entries() -> None:
    data = json.dumps([{"Config": "abc.json", "RepoTags": ["busybox:1"], "Layers": ["l1/layer.tar"]}]).encode()
    (entry,) = parse_docker_manifest(data)
    assert (entry.config, entry.repo_tags, entry.layers) == ("abc.json", ("busybox:1",), ("l1/layer.tar",))
    untagged = json.dumps([{"Config": "abc.json", "RepoTags": None, "Layers": []}]).encode()
    assert parse_docker_manifest(untagged)[0].repo_tags == ()


@pytest.mark.parametrize(
    "document",
    [
        [],
        {},
        [1],
        [{"RepoTags": [], "Layers": []}],
        [{"Config": "c", "Layers": "x"}],
        [{"Config": "c", "RepoTags": [3], "Layers": []}],
    ],
)
def test_docker_manifest_refuses_wrong_shapes(document: object) -> None:
    with pytest.raises(ArchiveError, match="manifest.json"):
        parse_docker_manifest(json.dumps(document).encode())


def test_oci_layout_version() -> None:
    parse_oci_layout(b'{"imageLayoutVersion": "1.0.0"}')
    for bad in (b'{"imageLayoutVersion": "2.0.0"}', b"{}", b"[]", b"nope"):
        with pytest.raises(ArchiveError, match="oci-layout"):
            parse_oci_layout(bad)


def test_oci_index_without_media_type_and_its_names() -> None:
    digest = "sha256:" + "a" * 64
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": 10,
        "annotations": {REF_NAME: "1.0", CONTAINERD_NAME: "docker.io/library/busybox:1.0"},
    }
    index = parse_oci_index(json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode())
    assert entry_names(index.manifests[0]) == ("docker.io/library/busybox:1.0",)
    only_ref = Descriptor("x", digest, 1, annotations={REF_NAME: "1.0"})
    assert entry_names(only_ref) == ("1.0",)
    assert entry_names(Descriptor("x", digest, 1)) == ()


def test_oci_index_that_is_a_manifest_is_refused() -> None:
    manifest = small_image("m").manifest
    with pytest.raises(ArchiveError, match="not an image index"):
        parse_oci_index(manifest)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
archive_keys = st.sampled_from(
    ["Config", "RepoTags", "Layers", "schemaVersion", "manifests", "mediaType", "digest", "size", "imageLayoutVersion"]
)
json_documents = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(archive_keys, inner, max_size=5),
    max_leaves=16,
)


garbage = st.binary(max_size=256) | json_documents.map(lambda value: json.dumps(value).encode())


@given(garbage)
def test_garbage_is_a_clean_archive_error(data: bytes) -> None:
    for parse in (parse_docker_manifest, parse_oci_index, parse_oci_layout):
        with contextlib.suppress(ArchiveError):
            parse(data)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["index.json", "manifest.json"]), garbage)
def test_archive_of_garbage_metadata_is_refused_cleanly(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        members = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', name: data}
        with pytest.raises(ArchiveError):
            ImageArchive(write_tar(Path(directory) / "garbage.tar", members), AMD64)


# -- OCI layouts --------------------------------------------------------------------


def test_oci_layout_image_with_names_and_digests(tmp_path: Path) -> None:
    image = make_image([busybox_layer()], {"Labels": {"t": "oci"}})
    entries = [
        LayoutEntry(image, {REF_NAME: "docker.io/library/busybox:1"}),
        LayoutEntry(image, {REF_NAME: "latest"}),
    ]
    archive = ImageArchive(write_tar(tmp_path / "oci.tar", oci_layout_members(entries)), AMD64)
    found = only_image(archive)
    assert found.names == ("docker.io/library/busybox:1", "latest")
    assert found.entry_digests == (image.manifest_digest,)
    source = found.source
    assert (source.config.digest, source.manifest_digest, source.manifest) == (
        image.config_digest,
        image.manifest_digest,
        image.manifest,
    )
    assert source.config_bytes == image.config
    assert read_layer(archive, source.layers[0]) == busybox_layer().data


def test_gzipped_outer_tar_reads_the_same(tmp_path: Path) -> None:
    image = small_image("gz")
    path = write_tar(tmp_path / "oci.tar.gz", oci_layout_members([LayoutEntry(image)]), gzipped=True)
    archive = ImageArchive(path, AMD64)
    layer = only_image(archive).source.layers[0]
    assert read_layer(archive, layer) == image.layers[0].data


@pytest.mark.parametrize(("platform", "arch"), [(AMD64, "amd64"), (ARM64, "arm64")])
def test_multi_platform_index_picks_the_platform(tmp_path: Path, platform: object, arch: str) -> None:
    images = {
        p: make_image([busybox_layer(), arch_marker_layer(a)], {"Labels": {"t": a}}, platform=p)
        for p, a in (("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64"))
    }
    index = make_index(images)
    members = oci_layout_members([LayoutEntry(index, {REF_NAME: "example.com/multi:1"})])
    found = only_image(ImageArchive(write_tar(tmp_path / "multi.tar", members), platform))  # type: ignore[arg-type]
    chosen = images["linux/amd64" if arch == "amd64" else "linux/arm64/v8"]
    assert found.source.config.digest == chosen.config_digest
    assert found.source.indexes == {index.digest: index.manifest}
    assert found.entry_digests == (index.digest,)


def test_index_without_the_platform_names_what_it_has(tmp_path: Path) -> None:
    index = make_index({"linux/arm64/v8": small_image("arm", platform="linux/arm64/v8")})
    path = write_tar(tmp_path / "arm.tar", oci_layout_members([LayoutEntry(index)]))
    with pytest.raises(ArchiveError, match=r"no image for platform linux/amd64 .*linux/arm64"):
        ImageArchive(path, AMD64)


def test_corrupt_manifest_blob_is_refused(tmp_path: Path) -> None:
    image = small_image("corrupt")
    members = oci_layout_members([LayoutEntry(image)])
    members[blob_path(image.manifest_digest)] = image.manifest.replace(b"schemaVersion", b"schemaVersiom")
    with pytest.raises(ArchiveError, match=f"blob {image.manifest_digest}"):
        ImageArchive(write_tar(tmp_path / "bad.tar", members), AMD64)


def test_missing_layer_blob_is_refused(tmp_path: Path) -> None:
    image = small_image("missing")
    members = oci_layout_members([LayoutEntry(image)])
    del members[blob_path(image.layers[0].digest)]
    with pytest.raises(ArchiveError, match="is not in the archive"):
        ImageArchive(write_tar(tmp_path / "missing.tar", members), AMD64)


def test_layer_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    image = small_image("size")
    members = oci_layout_members([LayoutEntry(image)])
    members[blob_path(image.layers[0].digest)] = image.layers[0].data + b"\0"
    with pytest.raises(ArchiveError, match="the manifest says"):
        ImageArchive(write_tar(tmp_path / "size.tar", members), AMD64)


# -- docker save ------------------------------------------------------------------------


def test_docker_save_with_plain_and_gzip_layers(tmp_path: Path) -> None:
    plain = make_layer([file_entry("plain", b"p\n")], "none")
    packed = make_layer([file_entry("packed", b"g\n")], "gzip")
    image = make_image([plain, packed], {"Labels": {"t": "docker"}})
    archive = ImageArchive(write_tar(tmp_path / "save.tar", docker_save_members([(image, ["busybox:1"])])), AMD64)
    found = only_image(archive)
    assert found.names == ("busybox:1",) and found.entry_digests == ()
    assert found.source.config.digest == image.config_digest
    layers = found.source.layers
    assert [layer.digest for layer in layers] == [plain.digest, packed.digest]
    assert [layer.media_type for layer in layers] == [
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ]
    manifest = json.loads(found.source.manifest)
    assert manifest["config"]["digest"] == image.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == [plain.digest, packed.digest]
    assert read_layer(archive, layers[1]) == packed.data


def test_docker_save_layer_behind_a_symlink(tmp_path: Path) -> None:
    image = small_image("link", "none")
    members = docker_save_members([(image, [])])
    layer_dir = image.layers[0].digest.removeprefix("sha256:")
    members["elsewhere/layer.tar"] = members.pop(f"{layer_dir}/layer.tar")
    members[f"{layer_dir}/layer.tar"] = Symlink("../elsewhere/layer.tar")
    archive = ImageArchive(write_tar(tmp_path / "link.tar", members), AMD64)
    found = only_image(archive)
    assert found.names == ()
    assert read_layer(archive, found.source.layers[0]) == image.layers[0].data


def test_docker_save_symlink_loop_is_refused(tmp_path: Path) -> None:
    image = small_image("loop", "none")
    members = docker_save_members([(image, [])])
    layer_dir = image.layers[0].digest.removeprefix("sha256:")
    members[f"{layer_dir}/layer.tar"] = Symlink("layer.tar")
    with pytest.raises(ArchiveError, match="links in a row"):
        ImageArchive(write_tar(tmp_path / "loop.tar", members), AMD64)


def test_docker_save_config_whose_name_lies_is_refused(tmp_path: Path) -> None:
    image = small_image("lies")
    members = docker_save_members([(image, [])])
    config_name = image.config_digest.removeprefix("sha256:") + ".json"
    members[config_name] = image.config.replace(b"lies", b"true")
    with pytest.raises(ArchiveError, match="its name says"):
        ImageArchive(write_tar(tmp_path / "lies.tar", members), AMD64)


# -- what is not an image archive ----------------------------------------------------------


def test_not_an_archive_unknown_format_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("hello, not a tar\n" * 100)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        ImageArchive(tmp_path / "text", AMD64)
    with pytest.raises(ArchiveError, match="unknown format"):
        ImageArchive(write_tar(tmp_path / "other.tar", {"README": b"hi"}), AMD64)
    with pytest.raises(ArchiveError, match="No such file"):
        ImageArchive(tmp_path / "absent.tar", AMD64)


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "cut.tar", oci_layout_members([LayoutEntry(small_image("cut"))]))
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(ArchiveError):
        ImageArchive(path, AMD64)


# -- names -------------------------------------------------------------------------------------


def archived(names: tuple[str, ...], entry_digests: tuple[str, ...] = ()) -> ArchivedImage:
    return ArchivedImage(source=None, names=names, entry_digests=entry_digests)  # type: ignore[arg-type]


DIGEST = "sha256:" + "b" * 64


def test_bare_tags() -> None:
    assert is_bare_tag("1.36") and is_bare_tag("latest") and is_bare_tag("busybox")
    assert not any(is_bare_tag(name) for name in ("busybox:1", "example.com/app", "a@sha256:00"))


def test_full_names_are_normalised_with_repo_digests() -> None:
    names = assign_names(archived(("busybox:1", "example.com/app:v2"), (DIGEST,)), [], 1)
    assert names.tags == ["docker.io/library/busybox:1", "example.com/app:v2"]
    assert names.digests == [f"docker.io/library/busybox@{DIGEST}", f"example.com/app@{DIGEST}"]


def test_bare_tags_take_the_repository_from_name() -> None:
    names = assign_names(archived(("1.36", "latest"), (DIGEST,)), ["example.com/busybox"], 1)
    assert names.tags == ["example.com/busybox:1.36", "example.com/busybox:latest"]
    assert names.digests == [f"example.com/busybox@{DIGEST}"]
    with pytest.raises(InvalidArgument, match="--name REPOSITORY"):
        assign_names(archived(("1.36",)), [], 1)


def test_name_with_a_tag_and_without() -> None:
    names = assign_names(archived(("busybox:1",)), ["mine:v1", "other"], 1)
    assert names.tags == ["docker.io/library/busybox:1", "docker.io/library/mine:v1", "docker.io/library/other:latest"]
    assert names.digests == []
    with pytest.raises(InvalidArgument, match="fits one image"):
        assign_names(archived(()), ["mine:v1"], 2)
    with pytest.raises(InvalidArgument, match="not a digest"):
        assign_names(archived(()), [f"mine@{DIGEST}"], 1)
    with pytest.raises(InvalidArgument, match="--name Bad"):
        assign_names(archived(()), ["Bad"], 1)

"""ImageService through gRPC against a real pycri and a real registry."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from pycri.image.snapshots import chain_ids
from tests.support.busybox_images import TestImages, busybox_layer, push_tagged
from tests.support.daemon import PycriProcess
from tests.support.oci_images import dir_entry, file_entry, make_image, make_layer, symlink_entry
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration


def spec(image: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image)


def pull(daemon: PycriProcess, image: str, auth: api_pb2.AuthConfig | None = None) -> str:
    request = api_pb2.PullImageRequest(image=spec(image), auth=auth)
    return daemon.images().PullImage(request, timeout=120).image_ref


def status(daemon: PycriProcess, image: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    return daemon.images().ImageStatus(api_pb2.ImageStatusRequest(image=spec(image), verbose=verbose))


def rpc_error(call, *args) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=120)
    return caught.value


def snapshot_fs(daemon: PycriProcess, chain_id: str) -> Path:
    return daemon.base / "root" / "snapshots" / chain_id.removeprefix("sha256:") / "fs"


def leftovers(daemon: PycriProcess) -> list[str]:
    """Temp files of unpacks and downloads: none may stay visible after a pull ends."""
    root = daemon.base / "root"
    snapshots = root / "snapshots"
    found = [p.name for p in snapshots.iterdir() if not p.name.isalnum()] if snapshots.exists() else []
    ingest = root / "content" / "ingest"
    if ingest.exists():
        found += [p.name for p in ingest.iterdir()]
    return found


@pytest.fixture
def mirrored(pycri_dir: Path, registry: LocalRegistry) -> Iterator[PycriProcess]:
    """pycri serving registry.k8s.io and gcr.io from the local registry, pause image pinned."""
    settings = {
        "images": {"mirrors": {"registry.k8s.io": [registry.url], "gcr.io": [registry.url]}},
        "runtime": {"pause_image": "registry.k8s.io/pause:3.10"},
    }
    daemon = PycriProcess(pycri_dir, settings).start()
    yield daemon
    daemon.stop()


def test_pull_returns_image_id_and_status_describes_it(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.busybox
    assert pull(pycri, image.reference) == image.image_id
    found = status(pycri, image.reference).image
    assert found.id == image.image_id
    assert list(found.repo_tags) == [image.reference]
    assert list(found.repo_digests) == [image.digest_reference]
    assert found.size == image.size
    assert not found.pinned
    for chain in chain_ids(list(image.diff_ids)):
        assert (snapshot_fs(pycri, chain) / "bin" / "busybox").is_file()
    assert leftovers(pycri) == []


def test_status_by_id_short_id_and_digest(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.busybox
    pull(pycri, image.reference)
    hex_id = image.image_id.removeprefix("sha256:")
    for name in (image.image_id, hex_id, hex_id[:12], image.digest_reference):
        assert status(pycri, name).image.id == image.image_id, name


def test_status_of_absent_image_is_empty(pycri: PycriProcess, test_images: TestImages) -> None:
    reply = status(pycri, f"{test_images.registry_host}/nothing/here:1")
    assert not reply.HasField("image")


def test_verbose_status_carries_the_image_config(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.user
    pull(pycri, image.reference)
    reply = status(pycri, image.reference, verbose=True)
    info = json.loads(reply.info["info"])
    assert info["imageSpec"]["config"]["User"] == "pycri"
    assert reply.image.username == "pycri"
    assert not reply.image.HasField("uid")


def test_numeric_user_is_reported_as_uid(pycri: PycriProcess, registry: LocalRegistry) -> None:
    image = make_image([busybox_layer()], {"User": "1000:1000", "Labels": {"t": "uid"}})
    pushed = push_tagged(registry.url, "pycri-test/uid", ("v1",), image)
    pull(pycri, pushed.reference)
    found = status(pycri, pushed.reference).image
    assert found.uid.value == 1000 and found.username == ""


def test_several_tags_of_one_image(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.busybox
    for reference in image.references:
        assert pull(pycri, reference) == image.image_id
    found = status(pycri, image.image_id).image
    assert sorted(found.repo_tags) == sorted(image.references)
    images = pycri.images().ListImages(api_pb2.ListImagesRequest()).images
    assert [i.id for i in images] == [image.image_id]


def test_remove_one_tag_keeps_the_others(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.busybox
    for reference in image.references:
        pull(pycri, reference)
    pycri.images().RemoveImage(api_pb2.RemoveImageRequest(image=spec(image.tagged("1.0"))))
    found = status(pycri, image.image_id).image
    assert image.tagged("1.0") not in found.repo_tags
    assert image.tagged("1.1") in found.repo_tags
    for chain in chain_ids(list(image.diff_ids)):
        assert snapshot_fs(pycri, chain).is_dir()


def test_removing_the_last_tag_removes_image_and_its_snapshots(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.zstd
    pull(pycri, image.reference)
    pycri.images().RemoveImage(api_pb2.RemoveImageRequest(image=spec(image.reference)))
    assert not status(pycri, image.image_id).HasField("image")
    for chain in chain_ids(list(image.diff_ids)):
        assert not snapshot_fs(pycri, chain).exists()
    content = pycri.base / "root" / "content" / "sha256"
    assert list(content.iterdir()) == []


def test_remove_by_id_and_by_digest(pycri: PycriProcess, test_images: TestImages) -> None:
    first, second = test_images.busybox, test_images.plain
    pull(pycri, first.reference)
    pull(pycri, second.reference)
    pycri.images().RemoveImage(api_pb2.RemoveImageRequest(image=spec(first.image_id)))
    pycri.images().RemoveImage(api_pb2.RemoveImageRequest(image=spec(second.digest_reference)))
    assert list(pycri.images().ListImages(api_pb2.ListImagesRequest()).images) == []


def test_remove_absent_image_is_not_an_error(pycri: PycriProcess, test_images: TestImages) -> None:
    pycri.images().RemoveImage(api_pb2.RemoveImageRequest(image=spec(f"{test_images.registry_host}/absent:1")))


def test_list_filter(pycri: PycriProcess, test_images: TestImages) -> None:
    pull(pycri, test_images.busybox.reference)
    pull(pycri, test_images.plain.reference)
    request = api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=spec(test_images.plain.reference)))
    assert [i.id for i in pycri.images().ListImages(request).images] == [test_images.plain.image_id]
    assert len(pycri.images().ListImages(api_pb2.ListImagesRequest()).images) == 2


def test_multi_arch_index_picks_the_configured_platform(pycri_dir: Path, test_images: TestImages) -> None:
    index = test_images.multiarch
    for platform, marker in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        daemon = PycriProcess(pycri_dir / marker, {"images": {"platform": platform}})
        daemon.base.mkdir()
        daemon.start()
        try:
            chosen = index.platforms["linux/amd64" if marker == "amd64" else "linux/arm64/v8"]
            assert pull(daemon, index.reference) == chosen.image_id
            top = chain_ids(list(chosen.diff_ids))[-1]
            assert (snapshot_fs(daemon, top) / "etc" / "arch").read_text() == f"{marker}\n"
            assert status(daemon, index.reference).image.repo_digests == [index.digest_reference]
        finally:
            daemon.stop()


@pytest.mark.parametrize("name", ["docker", "zstd", "plain"])
def test_manifest_and_layer_formats(pycri: PycriProcess, test_images: TestImages, name: str) -> None:
    image = getattr(test_images, name)
    assert pull(pycri, image.reference) == image.image_id
    top = chain_ids(list(image.diff_ids))[-1]
    root = snapshot_fs(pycri, top)
    assert (root / "bin" / "busybox").is_file() or (root / "etc" / "pycri-image").is_file()


def test_layers_unpack_with_whiteouts_opaque_dirs_and_links(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.layers
    pull(pycri, image.reference)
    third = snapshot_fs(pycri, chain_ids(list(image.diff_ids))[2])
    gone = os.lstat(third / "data" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(third / "opq", "trusted.overlay.opaque") == b"y"
    assert os.stat(third / "data" / "three").st_ino == os.stat(third / "data" / "three-hardlink").st_ino
    assert os.readlink(third / "data" / "keep-symlink") == "keep"


def test_mirror_serves_upstream_names_and_pause_is_pinned(mirrored: PycriProcess, test_images: TestImages) -> None:
    image_id = pull(mirrored, "registry.k8s.io/pause:3.10")
    assert image_id == test_images.pause.image_id
    found = status(mirrored, "registry.k8s.io/pause:3.10").image
    assert found.pinned
    assert "registry.k8s.io/pause:3.10" in found.repo_tags
    assert pull(mirrored, "gcr.io/pycri-test/busybox:1.0") == test_images.busybox.image_id
    assert not status(mirrored, "gcr.io/pycri-test/busybox:1.0").image.pinned


def test_malformed_reference_is_invalid_argument(pycri: PycriProcess) -> None:
    for bad in ("UPPER/Case:x", "busybox:bad tag", "a@sha256:123", ""):
        error = rpc_error(pycri.images().PullImage, api_pb2.PullImageRequest(image=spec(bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_unknown_image_is_not_found_naming_registry_and_reference(pycri: PycriProcess, registry: LocalRegistry) -> None:
    reference = f"{registry.host}/pycri-test/absent:9"
    error = rpc_error(pycri.images().PullImage, api_pb2.PullImageRequest(image=spec(reference)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert registry.host in error.details() and "pycri-test/absent" in error.details()


def test_unreachable_registry_is_unavailable(pycri: PycriProcess) -> None:
    error = rpc_error(pycri.images().PullImage, api_pb2.PullImageRequest(image=spec("127.0.0.1:9/x/y:1")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:9" in error.details()


def test_registry_credentials_from_auth_config(pycri: PycriProcess, tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "auth-registry", auth=("alice", "s3cret")) as private:
        image = make_image([busybox_layer()], {"Labels": {"t": "auth"}})
        pushed = push_tagged(private.url, "private/busybox", ("v1",), image, auth=("alice", "s3cret"))
        request = api_pb2.PullImageRequest(image=spec(pushed.reference))
        assert rpc_error(pycri.images().PullImage, request).code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = api_pb2.AuthConfig(username="alice", password="wrong")
        denied = rpc_error(pycri.images().PullImage, api_pb2.PullImageRequest(image=spec(pushed.reference), auth=wrong))
        assert denied.code() == grpc.StatusCode.UNAUTHENTICATED
        right = api_pb2.AuthConfig(username="alice", password="s3cret")
        assert pull(pycri, pushed.reference, right) == image.config_digest


@pytest.mark.parametrize(
    "escape",
    [
        [file_entry("../escaped", b"x")],
        [symlink_entry("link", "/tmp"), file_entry("link/escaped", b"x")],
        [dir_entry("etc"), symlink_entry("etc/up", "../.."), file_entry("etc/up/escaped", b"x")],
    ],
    ids=["dotdot", "through-absolute-symlink", "through-relative-symlink"],
)
def test_layer_escaping_its_snapshot_fails_and_leaves_nothing(
    pycri: PycriProcess, registry: LocalRegistry, escape: list, request: pytest.FixtureRequest
) -> None:
    image = make_image([busybox_layer(), make_layer(escape)], {"Labels": {"t": request.node.name}})
    pushed = push_tagged(registry.url, "pycri-test/escape", (request.node.callspec.id,), image)
    error = rpc_error(pycri.images().PullImage, api_pb2.PullImageRequest(image=spec(pushed.reference)))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert "escaped" in error.details() or "outside" in error.details()
    assert not Path("/tmp/escaped").exists()
    assert leftovers(pycri) == []
    top = chain_ids(list(image.diff_ids))[-1]
    assert not snapshot_fs(pycri, top).exists()
    assert list(pycri.images().ListImages(api_pb2.ListImagesRequest()).images) == []


def test_corrupted_blob_fails_with_digest_error(pycri: PycriProcess, registry: LocalRegistry) -> None:
    layer = make_layer([file_entry("corrupt-me", os.urandom(4096))])
    image = make_image([busybox_layer(), layer], {"Labels": {"t": "corrupt"}})
    pushed = push_tagged(registry.url, "pycri-test/corrupt", ("v1",), image)
    hex_digest = layer.digest.removeprefix("sha256:")
    stored = next(registry.workdir.rglob(f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"))
    stored.write_bytes(stored.read_bytes()[:-100])  # truncated
    error = rpc_error(pycri.images().PullImage, api_pb2.PullImageRequest(image=spec(pushed.reference)))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert registry.host in error.details() and layer.digest in error.details()
    assert leftovers(pycri) == []


def test_image_fs_info_counts_real_usage(pycri: PycriProcess, test_images: TestImages) -> None:
    before = pycri.images().ImageFsInfo(api_pb2.ImageFsInfoRequest()).image_filesystems[0]
    pull(pycri, test_images.layers.reference)
    # The reply is cached for a few seconds; a new daemon measures afresh.
    pycri.stop()
    pycri.start()
    after = pycri.images().ImageFsInfo(api_pb2.ImageFsInfoRequest()).image_filesystems[0]
    assert after.fs_id.mountpoint == str(pycri.base / "root")
    assert after.used_bytes.value > before.used_bytes.value + 1_000_000  # busybox is ~2 MB
    assert after.inodes_used.value > before.inodes_used.value + 200  # busybox applet links
    assert after.timestamp > 0


def test_images_survive_a_restart(pycri: PycriProcess, test_images: TestImages) -> None:
    pull(pycri, test_images.busybox.reference)
    pycri.stop()
    pycri.start()
    assert status(pycri, test_images.busybox.reference).image.id == test_images.busybox.image_id

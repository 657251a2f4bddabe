from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
from pathlib import Path

import pytest
import zstandard

from tests.support.busybox_images import PushedImage, TestImages, busybox_layer
from tests.support.oci_images import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PushError,
    fetch_manifest,
    make_image,
    push_image,
    sha256_digest,
)
from tests.support.registry import LocalRegistry, loopback_opener

pytestmark = pytest.mark.integration


def repo_of(image: PushedImage) -> str:
    return image.repository.split("/", 1)[1]


def fetch_blob(registry: LocalRegistry, repo: str, digest: str) -> bytes:
    with loopback_opener.open(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=60) as response:
        return bytes(response.read())


def test_registry_serves_only_on_loopback(registry: LocalRegistry) -> None:
    assert registry.host == f"127.0.0.1:{registry.port}"
    with loopback_opener.open(f"{registry.url}/v2/", timeout=10) as response:
        assert response.status == 200


def test_every_standard_image_is_served_under_its_tags(registry: LocalRegistry, test_images: TestImages) -> None:
    images = [
        test_images.busybox,
        test_images.user,
        test_images.layers,
        test_images.docker,
        test_images.zstd,
        test_images.plain,
        test_images.pause,
    ]
    for image in images:
        for tag in image.tags:
            body, media_type, digest = fetch_manifest(registry.url, repo_of(image), tag)
            assert digest == image.manifest_digest == sha256_digest(body)
            assert body == image.image.manifest
            assert media_type == image.image.manifest_media_type
    assert test_images.busybox.references == tuple(
        f"{registry.host}/pycri-test/busybox:{tag}" for tag in ("latest", "1.0", "1.1")
    )
    assert test_images.pause.reference == f"{registry.host}/pause:3.10"
    assert test_images.docker.image.manifest_media_type == DOCKER_MANIFEST
    assert len({image.image_id for image in images}) == len(images)


def test_multiarch_index_lists_both_platforms(registry: LocalRegistry, test_images: TestImages) -> None:
    multiarch = test_images.multiarch

    body, media_type, digest = fetch_manifest(registry.url, "pycri-test/multiarch", "latest")

    assert media_type == OCI_INDEX and digest == multiarch.digest
    platforms = {
        (entry["platform"]["os"], entry["platform"]["architecture"]): entry["digest"]
        for entry in json.loads(body)["manifests"]
    }
    assert platforms == {
        ("linux", "amd64"): multiarch.platforms["linux/amd64"].manifest_digest,
        ("linux", "arm64"): multiarch.platforms["linux/arm64/v8"].manifest_digest,
    }
    for platform_image in multiarch.platforms.values():
        child, child_type, _ = fetch_manifest(registry.url, "pycri-test/multiarch", platform_image.manifest_digest)
        assert child_type == OCI_MANIFEST and child == platform_image.image.manifest


def test_multiarch_marker_layer_names_the_architecture(registry: LocalRegistry, test_images: TestImages) -> None:
    for platform, expected in (("linux/amd64", b"amd64\n"), ("linux/arm64/v8", b"arm64\n")):
        marker_layer = test_images.multiarch.platforms[platform].image.layers[-1]
        blob = fetch_blob(registry, "pycri-test/multiarch", marker_layer.digest)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as archive:
            reader = archive.extractfile("etc/arch")
            assert reader is not None and reader.read() == expected


def test_zstd_and_plain_layers_are_served_as_built(registry: LocalRegistry, test_images: TestImages) -> None:
    zstd_layer = test_images.zstd.image.layers[0]
    plain_layer = test_images.plain.image.layers[0]

    zstd_blob = fetch_blob(registry, "pycri-test/zstd", zstd_layer.digest)
    plain_blob = fetch_blob(registry, "pycri-test/plain", plain_layer.digest)

    assert sha256_digest(zstd_blob) == zstd_layer.digest
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(zstd_blob)
    assert sha256_digest(tar_bytes) == zstd_layer.diff_id == test_images.zstd.diff_ids[0]
    assert sha256_digest(plain_blob) == plain_layer.digest == plain_layer.diff_id


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_sees_the_pushed_digests(test_images: TestImages) -> None:
    busybox = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{test_images.busybox.reference}"],
        check=True,
        capture_output=True,
        text=True,
    )
    user = subprocess.run(
        ["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{test_images.user.reference}"],
        check=True,
        capture_output=True,
        text=True,
    )

    assert json.loads(busybox.stdout)["Digest"] == test_images.busybox.manifest_digest
    user_config = json.loads(user.stdout)["config"]
    assert (user_config["User"], user_config["WorkingDir"], user_config["StopSignal"]) == (
        "pycri",
        "/home/pycri",
        "SIGINT",
    )


def test_auth_registry_refuses_anonymous_pushes_and_takes_credentials(tmp_path: Path) -> None:
    pytest.importorskip("bcrypt")
    credentials = ("pycri", "s3cret")
    image = make_image([busybox_layer()], {"Cmd": ["sh"]})

    with LocalRegistry(tmp_path, auth=credentials) as auth_registry:
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            loopback_opener.open(f"{auth_registry.url}/v2/", timeout=10)
        with pytest.raises(PushError, match="401"):
            push_image(auth_registry.url, "private/busybox", "latest", image)
        with pytest.raises(PushError, match="401"):
            push_image(auth_registry.url, "private/busybox", "latest", image, auth=("pycri", "wrong"))

        digest = push_image(auth_registry.url, "private/busybox", "latest", image, auth=credentials)

        _, _, served_digest = fetch_manifest(auth_registry.url, "private/busybox", "latest", auth=credentials)
    assert anonymous.value.code == 401
    assert anonymous.value.headers["WWW-Authenticate"].startswith("Basic")
    assert digest == served_digest == image.manifest_digest


def test_registries_side_by_side_get_own_ports_and_stop_their_own_process(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "first") as first, LocalRegistry(tmp_path / "second") as second:
        assert first.port != second.port
        first_pid = first.pid
        assert first_pid is not None
        first.stop()
        with loopback_opener.open(f"{second.url}/v2/", timeout=10) as response:
            assert response.status == 200
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)

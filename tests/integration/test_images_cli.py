"""`pycri images import|ls|rm` on a private root, alone and beside a running daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.image.snapshots import chain_ids
from tests.support.busybox_images import TestImages, busybox_layer
from tests.support.daemon import REPO, PycriProcess
from tests.support.image_archives import (
    REF_NAME,
    LayoutEntry,
    blob_path,
    docker_save_members,
    oci_layout_members,
    write_tar,
)
from tests.support.oci_images import Image, dir_entry, file_entry, make_image, make_layer, symlink_entry

pytestmark = pytest.mark.integration


@pytest.fixture
def node(pycri_dir: Path) -> Iterator[PycriProcess]:
    """A config for a private root; the test starts the daemon when it wants one."""
    daemon = PycriProcess(pycri_dir)
    daemon.write_config()
    yield daemon
    daemon.stop()


def images_cli(node: PycriProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pycri", "--config", str(node.config_path), "images", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)


def ok(node: PycriProcess, *args: str) -> str:
    done = images_cli(node, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def failure(node: PycriProcess, *args: str) -> str:
    """The one line a failed command prints."""
    done = images_cli(node, *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def status(node: PycriProcess, image: str) -> api_pb2.ImageStatusResponse:
    return node.images().ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)))


def stored(node: PycriProcess) -> dict[str, list[str]]:
    """Everything an import can leave on disk."""
    root = node.base / "root"

    def names(path: Path) -> list[str]:
        return sorted(p.name for p in path.iterdir()) if path.exists() else []

    return {
        "blobs": names(root / "content" / "sha256"),
        "ingest": names(root / "content" / "ingest"),
        "snapshots": names(root / "snapshots"),
    }


NOTHING: dict[str, list[str]] = {"blobs": [], "ingest": [], "snapshots": []}


def snapshot_fs(node: PycriProcess, chain_id: str) -> Path:
    return node.base / "root" / "snapshots" / chain_id.removeprefix("sha256:") / "fs"


def busybox_image(label: str) -> Image:
    return make_image([busybox_layer()], {"Labels": {"t": label}, "Cmd": ["sh"]})


def test_oci_layout_import_is_listed_and_seen_by_a_daemon(node: PycriProcess, tmp_path: Path) -> None:
    image = busybox_image("cli-oci")
    entry = LayoutEntry(image, {REF_NAME: "docker.io/library/busybox:1"})
    archive = write_tar(tmp_path / "busybox.tar", oci_layout_members([entry]))
    repo_digest = f"docker.io/library/busybox@{image.manifest_digest}"
    expected = f"imported {image.config_digest} docker.io/library/busybox:1 {repo_digest}\n"
    assert ok(node, "import", str(archive)) == expected

    header, row = ok(node, "ls").splitlines()
    assert header.split() == ["IMAGE", "ID", "REPOSITORY:TAG", "SIZE", "PINNED"]
    short_id, name, size, pinned = row.split()
    assert (short_id, name, pinned) == (image.config_digest[7:20], "docker.io/library/busybox:1", "false")
    assert size.endswith("MB")
    assert ok(node, "ls", "--quiet") == f"{image.config_digest}\n"
    (listed,) = json.loads(ok(node, "ls", "--json"))["images"]
    assert (listed["id"], listed["repoTags"], listed["repoDigests"]) == (
        image.config_digest,
        ["docker.io/library/busybox:1"],
        [repo_digest],
    )
    assert (snapshot_fs(node, image.diff_ids[0]) / "bin" / "busybox").is_file()

    node.start()
    found = status(node, "busybox:1").image
    assert (found.id, list(found.repo_digests), found.size) == (image.config_digest, [repo_digest], image.size)


def test_docker_save_import_beside_a_daemon_then_rm(node: PycriProcess, tmp_path: Path) -> None:
    node.start()
    plain = make_layer([dir_entry("etc"), file_entry("etc/saved", b"saved\n")], "none")
    image = make_image([busybox_layer(), plain], {"Labels": {"t": "cli-docker"}})
    archive = write_tar(tmp_path / "saved.tar", docker_save_members([(image, ["pycri-test/saved:v1"])]))
    chains = chain_ids(list(image.diff_ids))
    output = ok(node, "import", str(archive), "--name", "pycri-test/saved:v2")
    assert output == f"imported {image.config_digest} docker.io/pycri-test/saved:v1 docker.io/pycri-test/saved:v2\n"
    found = status(node, "pycri-test/saved:v1").image
    assert found.id == image.config_digest and list(found.repo_digests) == []
    assert (snapshot_fs(node, chains[1]) / "etc" / "saved").read_text() == "saved\n"

    assert ok(node, "rm", "pycri-test/saved:v1") == "deleted pycri-test/saved:v1\n"
    assert list(status(node, image.config_digest).image.repo_tags) == ["docker.io/pycri-test/saved:v2"]
    ok(node, "rm", "pycri-test/saved:v2")
    assert not status(node, image.config_digest).HasField("image")
    # Fresh blobs and snapshots could be a daemon's pull in flight: only --force takes them.
    assert all(snapshot_fs(node, chain).is_dir() for chain in chains)
    assert failure(node, "rm", "pycri-test/saved:v2") == "pycri: images rm pycri-test/saved:v2: no such image"

    ok(node, "import", str(archive))
    assert ok(node, "rm", "--force", image.config_digest[7:19]) == f"deleted {image.config_digest[7:19]}\n"
    assert stored(node) == NOTHING
    assert list(node.images().ListImages(api_pb2.ListImagesRequest()).images) == []


def test_bare_oci_tag_takes_its_repository_from_name(node: PycriProcess, tmp_path: Path) -> None:
    image = busybox_image("cli-bare")
    archive = write_tar(tmp_path / "bare.tar", oci_layout_members([LayoutEntry(image, {REF_NAME: "1.0"})]))
    assert "--name REPOSITORY" in failure(node, "import", str(archive))
    assert stored(node) == NOTHING
    output = ok(node, "import", str(archive), "--name", "example.com/app")
    assert output.split()[2:] == ["example.com/app:1.0", f"example.com/app@{image.manifest_digest}"]


@pytest.mark.parametrize(
    "escape",
    [
        [file_entry("../escaped", b"x")],
        [symlink_entry("link", "/tmp"), file_entry("link/escaped", b"x")],
        [dir_entry("etc"), symlink_entry("etc/up", "../.."), file_entry("etc/up/escaped", b"x")],
    ],
    ids=["dotdot", "through-absolute-symlink", "through-relative-symlink"],
)
def test_escaping_layer_fails_and_leaves_nothing(node: PycriProcess, tmp_path: Path, escape: list) -> None:
    image = make_image([busybox_layer(), make_layer(escape)], {"Labels": {"t": "cli-escape"}})
    archive = write_tar(tmp_path / "escape.tar", oci_layout_members([LayoutEntry(image, {REF_NAME: "evil:1"})]))
    line = failure(node, "import", str(archive))
    assert line.startswith(f"pycri: import {archive}: ") and "escaped" in line
    assert not Path("/tmp/escaped").exists()
    assert stored(node) == NOTHING
    assert ok(node, "ls", "-q") == ""


def test_corrupt_layer_blob_fails_and_leaves_nothing(node: PycriProcess, tmp_path: Path) -> None:
    """The sound second layer unpacks beside the corrupt first one and goes again too."""
    sound = make_layer([dir_entry("etc"), file_entry("etc/sound", b"sound\n")])
    image = make_image([busybox_layer(), sound], {"Labels": {"t": "cli-corrupt"}})
    members = oci_layout_members([LayoutEntry(image, {REF_NAME: "corrupt:1"})])
    layer = image.layers[0]
    data = bytearray(layer.data)
    data[len(data) // 2] ^= 0xFF
    members[blob_path(layer.digest)] = bytes(data)
    archive = write_tar(tmp_path / "corrupt.tar", members)
    line = failure(node, "import", str(archive))
    assert str(archive) in line and layer.digest in line and "digest" in line
    assert stored(node) == NOTHING


def test_docker_save_layer_not_matching_the_diff_ids_fails(node: PycriProcess, tmp_path: Path) -> None:
    image = make_image([make_layer([file_entry("a", b"a\n")], "none")], {"Labels": {"t": "cli-diff"}})
    members = docker_save_members([(image, ["mismatch:1"])])
    layer_dir = image.layers[0].digest.removeprefix("sha256:")
    members[f"{layer_dir}/layer.tar"] = make_layer([file_entry("b", b"b\n")], "none").data
    line = failure(node, "import", str(write_tar(tmp_path / "mismatch.tar", members)))
    assert "differs from the image's" in line and image.diff_ids[0] in line
    assert stored(node) == NOTHING


def test_what_is_not_an_image_archive(node: PycriProcess, tmp_path: Path) -> None:
    absent = tmp_path / "absent.tar"
    assert failure(node, "import", str(absent)) == f"pycri: import {absent}: No such file or directory"
    text = tmp_path / "notes.txt"
    text.write_text("not a tar\n" * 200)
    assert failure(node, "import", str(text)).startswith(f"pycri: import {text}: not a tar archive")
    other = write_tar(tmp_path / "other.tar", {"README": b"hello"})
    assert "unknown format" in failure(node, "import", str(other))
    assert stored(node) == NOTHING


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_archives_written_by_skopeo(
    node: PycriProcess, test_images: TestImages, tmp_path: Path, transport: str
) -> None:
    pushed = test_images.busybox
    archive = tmp_path / f"{transport}.tar"
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            f"docker://{pushed.reference}",
            f"{transport}:{archive}:pycri-test/busybox:skopeo",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    output = ok(node, "import", str(archive))
    assert output.split()[1:3] == [pushed.image_id, "docker.io/pycri-test/busybox:skopeo"]
    node.start()
    assert status(node, "pycri-test/busybox:skopeo").image.id == pushed.image_id

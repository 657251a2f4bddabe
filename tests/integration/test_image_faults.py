"""Image operations that die half-way (daemon killed at a kill point, disk full) leave a store
that the next start makes whole or empty, and the same call then works."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from pycri.faults import ENV_VAR
from pycri.image.snapshots import chain_ids
from tests.support.busybox_images import PushedImage, busybox_layer, push_tagged
from tests.support.daemon import PycriProcess
from tests.support.oci_images import dir_entry, file_entry, make_image, make_layer
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration

BIG_LAYER_BYTES = 48 * 1024 * 1024
NOTHING: dict[str, list[str]] = {"blobs": [], "ingest": [], "snapshots": []}


@pytest.fixture(scope="module")
def big_image(registry: LocalRegistry) -> PushedImage:
    """An image with a large incompressible layer: more than a small disk holds."""
    payload = make_layer([file_entry("big/blob", os.urandom(BIG_LAYER_BYTES))])
    image = make_image([busybox_layer(), payload], {"Labels": {"t": "big"}})
    return push_tagged(registry.url, "pycri-test/big", ("v1",), image)


@pytest.fixture(scope="module")
def layered_image(registry: LocalRegistry) -> PushedImage:
    """Two layers of many entries, so an unpack is cut with entries on both sides of the kill."""
    files = [dir_entry("data"), *(file_entry(f"data/f{n:03}", os.urandom(4096)) for n in range(200))]
    image = make_image([busybox_layer(), make_layer(files)], {"Labels": {"t": "layered"}})
    return push_tagged(registry.url, "pycri-test/layered", ("v1", "v2"), image)


def request(image: PushedImage) -> api_pb2.PullImageRequest:
    return api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image.reference))


def visible_state(root: Path) -> dict[str, list[str]]:
    """Everything a pull can leave on disk: blobs, ingest files, snapshots and their temp dirs."""

    def names(path: Path) -> list[str]:
        return sorted(p.name for p in path.iterdir()) if path.exists() else []

    return {
        "blobs": names(root / "content" / "sha256"),
        "ingest": names(root / "content" / "ingest"),
        "snapshots": names(root / "snapshots"),
    }


def rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{root / 'pycri.db'}?mode=ro", uri=True)) as db:
        return db.execute(sql).fetchall()


def database(root: Path) -> dict[str, list[tuple[object, ...]]]:
    """The image rows, names, leases and intents."""
    return {
        "images": rows(root, "SELECT id FROM images ORDER BY id"),
        "names": rows(root, "SELECT name, image_id FROM image_names ORDER BY name"),
        "leases": rows(root, "SELECT owner, chain_id FROM snapshot_leases"),
        "intents": rows(root, "SELECT kind, object_id FROM intents"),
    }


def whole_image_state(image: PushedImage) -> dict[str, list[str]]:
    """What a pulled image keeps on disk: its config and manifest, one snapshot per layer."""
    return {
        "blobs": sorted(digest.removeprefix("sha256:") for digest in (image.image_id, image.manifest_digest)),
        "ingest": [],
        "snapshots": sorted(chain.removeprefix("sha256:") for chain in chain_ids(list(image.image.diff_ids))),
    }


@pytest.fixture
def armed(pycri_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], PycriProcess]]:
    """Starts a pycri that kills itself at the named kill point; a restart runs unarmed."""
    daemon = PycriProcess(pycri_dir)

    def start(kill_point: str) -> PycriProcess:
        monkeypatch.setenv(ENV_VAR, kill_point)
        daemon.start()
        monkeypatch.delenv(ENV_VAR)
        return daemon

    yield start
    daemon.stop()


def killed_by(daemon: PycriProcess, call: Callable[[], object]) -> None:
    """Make the call that reaches the armed kill point; the daemon dies of SIGKILL in it."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == -9, "the daemon did not die at its kill point"


def test_daemon_killed_mid_pull_leaves_nothing_and_next_pull_succeeds(
    armed: Callable[[str], PycriProcess], layered_image: PushedImage
) -> None:
    pycri = armed("pull_image.layer")
    root = pycri.base / "root"
    killed_by(pycri, lambda: pycri.images().PullImage(request(layered_image), timeout=60))
    # The kill came mid-unpack: unfinished intents (one per layer under way) name temp dirs,
    # one of them holding part of a layer.
    unpacks = rows(root, "SELECT kind, object_id FROM intents")
    assert unpacks and {kind for kind, _ in unpacks} == {"unpack_layer"}
    assert any(any((root / "snapshots" / str(temp) / "fs").glob("*")) for _, temp in unpacks)

    pycri.start()
    assert visible_state(root) == NOTHING
    assert database(root) == {"images": [], "names": [], "leases": [], "intents": []}
    assert list(pycri.images().ListImages(api_pb2.ListImagesRequest()).images) == []
    assert pycri.images().PullImage(request(layered_image), timeout=60).image_ref == layered_image.image_id
    assert visible_state(root) == whole_image_state(layered_image)


def test_daemon_killed_after_the_pull_is_recorded_keeps_the_whole_image(
    armed: Callable[[str], PycriProcess], layered_image: PushedImage
) -> None:
    pycri = armed("pull_image.committed")
    root = pycri.base / "root"
    killed_by(pycri, lambda: pycri.images().PullImage(request(layered_image), timeout=60))

    pycri.start()
    assert visible_state(root) == whole_image_state(layered_image)
    (listed,) = pycri.images().ListImages(api_pb2.ListImagesRequest()).images
    assert (listed.id, list(listed.repo_tags)) == (layered_image.image_id, [layered_image.reference])
    assert database(root)["intents"] == []
    assert pycri.images().PullImage(request(layered_image), timeout=60).image_ref == layered_image.image_id
    assert visible_state(root) == whole_image_state(layered_image)


@pytest.mark.parametrize("by_id", [True, False], ids=["by-id", "last-tag"])
def test_daemon_killed_after_the_removal_intent_finishes_the_removal_at_start(
    armed: Callable[[str], PycriProcess], layered_image: PushedImage, by_id: bool
) -> None:
    pycri = armed("remove_image.intent")
    root = pycri.base / "root"
    assert pycri.images().PullImage(request(layered_image), timeout=60).image_ref == layered_image.image_id
    target = layered_image.image_id if by_id else layered_image.reference
    remove = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=target))
    killed_by(pycri, lambda: pycri.images().RemoveImage(remove, timeout=60))
    assert database(root)["intents"] == [("remove_image", layered_image.image_id)]

    pycri.start()
    assert visible_state(root) == NOTHING
    assert database(root) == {"images": [], "names": [], "leases": [], "intents": []}
    assert list(pycri.images().ListImages(api_pb2.ListImagesRequest()).images) == []
    pycri.images().RemoveImage(remove, timeout=60)
    assert pycri.images().PullImage(request(layered_image), timeout=60).image_ref == layered_image.image_id


def test_removing_one_tag_killed_after_its_intent_keeps_the_other_tag(
    armed: Callable[[str], PycriProcess], layered_image: PushedImage
) -> None:
    pycri = armed("remove_image.intent")
    root = pycri.base / "root"
    first, second = (layered_image.tagged(tag) for tag in layered_image.tags)
    for reference in (first, second):
        pycri.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=reference)), timeout=60)
    remove = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=first))
    killed_by(pycri, lambda: pycri.images().RemoveImage(remove, timeout=60))

    pycri.start()
    (listed,) = pycri.images().ListImages(api_pb2.ListImagesRequest()).images
    assert (listed.id, list(listed.repo_tags)) == (layered_image.image_id, [second])
    assert visible_state(root) == whole_image_state(layered_image)
    assert database(root)["intents"] == []
    pycri.images().RemoveImage(remove, timeout=60)
    assert [list(image.repo_tags) for image in pycri.images().ListImages(api_pb2.ListImagesRequest()).images] == [
        [second]
    ]


@pytest.fixture
def small_disk_daemon(pycri_dir: Path) -> Iterator[PycriProcess]:
    """A pycri whose root dir is a 24 MiB tmpfs: the big image cannot fit."""
    root = pycri_dir / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "pycri-test-small", str(root)], check=True)
    daemon = PycriProcess(pycri_dir).start()
    try:
        yield daemon
    finally:
        daemon.stop()
        subprocess.run(["umount", str(root)], check=True)


def test_disk_full_fails_the_pull_and_leaves_nothing(
    small_disk_daemon: PycriProcess, big_image: PushedImage, registry: LocalRegistry
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        small_disk_daemon.images().PullImage(request(big_image), timeout=120)
    assert "No space left" in caught.value.details() or "ENOSPC" in caught.value.details()
    state = visible_state(small_disk_daemon.base / "root")
    assert state == NOTHING
    assert list(small_disk_daemon.images().ListImages(api_pb2.ListImagesRequest()).images) == []
    small = make_image([busybox_layer()], {"Labels": {"t": "fits"}})
    fits = push_tagged(registry.url, "pycri-test/fits", ("v1",), small)
    assert small_disk_daemon.images().PullImage(request(fits), timeout=60).image_ref == small.config_digest


def test_concurrent_pulls_of_one_image_agree(pycri: PycriProcess, big_image: PushedImage) -> None:
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(pycri.images().PullImage(request(big_image)).image_ref))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [big_image.image_id] * 3
    state = visible_state(pycri.base / "root")
    assert len([s for s in state["snapshots"] if not s.startswith("tmp")]) == 2
    assert state["ingest"] == []

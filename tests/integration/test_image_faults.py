"""Pulls that die half-way (daemon killed, disk full) leave nothing visible, and the next pull works."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.support.busybox_images import PushedImage, busybox_layer, push_tagged
from tests.support.daemon import PycriProcess
from tests.support.oci_images import file_entry, make_image, make_layer
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration

BIG_LAYER_BYTES = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def big_image(registry: LocalRegistry) -> PushedImage:
    """An image with a large incompressible layer, so a pull takes long enough to interrupt."""
    payload = make_layer([file_entry("big/blob", os.urandom(BIG_LAYER_BYTES))])
    image = make_image([busybox_layer(), payload], {"Labels": {"t": "big"}})
    return push_tagged(registry.url, "pycri-test/big", ("v1",), image)


def request(image: PushedImage) -> api_pb2.PullImageRequest:
    return api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image.reference))


def visible_state(root: Path) -> dict[str, list[str]]:
    """Everything a pull can leave: blobs, temp files, snapshots, image rows."""
    def names(path: Path) -> list[str]:
        return sorted(p.name for p in path.iterdir()) if path.exists() else []

    return {
        "blobs": names(root / "content" / "sha256"),
        "ingest": names(root / "content" / "ingest"),
        "snapshots": names(root / "snapshots"),
    }


def test_daemon_killed_mid_pull_leaves_nothing_and_next_pull_succeeds(
    pycri: PycriProcess, big_image: PushedImage
) -> None:
    ingest = pycri.base / "root" / "content" / "ingest"
    outcome: list[BaseException | str] = []

    def pull() -> None:
        try:
            outcome.append(pycri.images().PullImage(request(big_image), timeout=60).image_ref)
        except grpc.RpcError as exc:
            outcome.append(exc)

    puller = threading.Thread(target=pull)
    puller.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p.stat().st_size > 1 << 20 for p in ingest.iterdir()):
        time.sleep(0.002)
    assert pycri.proc is not None
    pycri.proc.send_signal(signal.SIGKILL)
    pycri.proc.wait()
    puller.join()
    assert isinstance(outcome[0], grpc.RpcError), "the pull finished before the daemon was killed"

    pycri.start()
    state = visible_state(pycri.base / "root")
    assert state["ingest"] == [] and not [s for s in state["snapshots"] if s.startswith("tmp")]
    assert list(pycri.images().ListImages(api_pb2.ListImagesRequest()).images) == []
    assert pycri.images().PullImage(request(big_image), timeout=120).image_ref == big_image.image_id


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
    assert state == {"blobs": [], "ingest": [], "snapshots": []}
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

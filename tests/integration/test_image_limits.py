"""Hostile layers pulled through a daemon: a PAX header or GNU long name of hundreds of MiB, too
many entries, a config over its cap. Each pull fails with RESOURCE_EXHAUSTED naming the
images.limits key, the daemon's peak memory stays put and nothing of the pull stays behind.
A pull cancelled mid-unpack stops the worker and removes its temp dir while other calls are
answered."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_image_faults import NOTHING, database, request, visible_state
from tests.support.busybox_images import PushedImage, busybox_layer, push_tagged
from tests.support.daemon import PycriProcess
from tests.support.hostile_tars import (
    StreamedLayer,
    gzip_layer,
    huge_pax_tar,
    long_name_tar,
    long_named_file_tar,
    zero_file_layer,
)
from tests.support.oci_images import OCI_LAYER_TYPES, Layer, file_entry, make_image, make_layer, sha256_digest
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
PEAK_GROWTH_MAX = 100 * MIB
EMPTY_DB: dict[str, list[tuple[object, ...]]] = {"images": [], "names": [], "leases": [], "intents": []}


def as_layer(streamed: StreamedLayer) -> Layer:
    return Layer(
        data=streamed.blob,
        digest=sha256_digest(streamed.blob),
        diff_id=streamed.diff_id,
        media_type=OCI_LAYER_TYPES["gzip"],
        size=len(streamed.blob),
        compression="gzip",
    )


def push_with_busybox(registry: LocalRegistry, repo: str, chunks: Iterable[bytes]) -> PushedImage:
    """Busybox below the hostile layer: a sibling layer that unpacks whole must go too."""
    image = make_image([busybox_layer(), as_layer(gzip_layer(chunks))], {"Labels": {"t": repo}})
    return push_tagged(registry.url, f"pycri-test/{repo}", ("v1",), image)


@pytest.fixture(scope="module")
def pax_bomb(registry: LocalRegistry) -> PushedImage:
    return push_with_busybox(registry, "pax-bomb", huge_pax_tar(512 * MIB))


@pytest.fixture(scope="module")
def long_name_bomb(registry: LocalRegistry) -> PushedImage:
    return push_with_busybox(registry, "long-name-bomb", long_name_tar(256 * MIB))


@pytest.fixture
def daemon(pycri_dir: Path, request: pytest.FixtureRequest) -> Iterator[PycriProcess]:
    settings = getattr(request, "param", {})
    started = PycriProcess(pycri_dir, settings=settings).start()
    yield started
    started.stop()


def peak_rss(daemon: PycriProcess) -> int:
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def refused_pull(daemon: PycriProcess, image: PushedImage) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        daemon.images().PullImage(request(image), timeout=120)
    return caught.value


def assert_nothing_left(daemon: PycriProcess) -> None:
    root = daemon.base / "root"
    assert visible_state(root) == NOTHING
    assert database(root) == EMPTY_DB


@pytest.mark.parametrize(("bomb", "key"), [("pax_bomb", "pax_header_max_bytes"), ("long_name_bomb", "path_max_bytes")])
def test_a_huge_extended_header_fails_the_pull_without_memory_growth(
    daemon: PycriProcess, bomb: str, key: str, request: pytest.FixtureRequest
) -> None:
    image: PushedImage = request.getfixturevalue(bomb)
    assert image.image.layers[1].size < 2 * MIB
    before = peak_rss(daemon)
    error = refused_pull(daemon, image)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"images.limits.{key}" in (error.details() or "")
    assert peak_rss(daemon) - before < PEAK_GROWTH_MAX
    assert_nothing_left(daemon)
    assert daemon.runtime().Version(api_pb2.VersionRequest(), timeout=10).runtime_name


@pytest.mark.parametrize("daemon", [{"images": {"limits": {"entries_per_layer_max": 50}}}], indirect=True)
def test_a_layer_over_the_entry_cap_is_refused(daemon: PycriProcess, registry: LocalRegistry) -> None:
    layer = make_layer([file_entry(f"f{n:03}", b"x") for n in range(51)])
    image = push_tagged(registry.url, "pycri-test/many-entries", ("v1",), make_image([layer]))
    error = refused_pull(daemon, image)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "images.limits.entries_per_layer_max" in (error.details() or "")
    assert_nothing_left(daemon)


@pytest.mark.parametrize(
    ("daemon", "key"),
    [
        ({"images": {"limits": {"layer_unpacked_max_bytes": MIB}}}, "layer_unpacked_max_bytes"),
        ({"images": {"limits": {"image_unpacked_max_bytes": MIB}}}, "image_unpacked_max_bytes"),
    ],
    indirect=["daemon"],
)
def test_unpacked_size_caps(daemon: PycriProcess, registry: LocalRegistry, key: str) -> None:
    """Two 768 KiB files: in one layer they go over a 1 MiB layer cap; in two layers each layer
    stays under 1 MiB but the image goes over a 1 MiB image cap."""
    small = [make_layer([file_entry(f"d{n}/f", b"z" * (768 * 1024))]) for n in range(2)]
    together = make_layer([file_entry(f"d{n}/f", b"z" * (768 * 1024)) for n in range(2)])
    layers = [together] if key == "layer_unpacked_max_bytes" else small
    pushed = push_tagged(registry.url, f"pycri-test/{key.replace('_', '-')}", ("v1",), make_image(layers))
    error = refused_pull(daemon, pushed)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"images.limits.{key}" in (error.details() or "")
    assert_nothing_left(daemon)


def test_a_config_over_its_cap_is_refused_before_it_is_fetched(daemon: PycriProcess, registry: LocalRegistry) -> None:
    image = make_image([busybox_layer()], {"Labels": {"padding": "p" * (9 * MIB)}})
    pushed = push_tagged(registry.url, "pycri-test/big-config", ("v1",), image)
    error = refused_pull(daemon, pushed)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "images.limits.config_max_bytes" in (error.details() or "")
    assert_nothing_left(daemon)


def test_an_error_naming_a_long_entry_reaches_the_client_whole(daemon: PycriProcess, registry: LocalRegistry) -> None:
    """A refused entry of 4000 undecodable bytes (24 KiB as shown) still gives a status, not a
    broken connection: the message is cut below gRPC's metadata limit."""
    name = b"\xff" * 4000 + b"/../x"
    pushed = push_with_busybox(registry, "long-refused-name", long_named_file_tar(name))
    error = refused_pull(daemon, pushed)
    assert error.code() == grpc.StatusCode.DATA_LOSS
    details = error.details() or ""
    assert 1000 < len(details) < 4096 and details.endswith("more characters)")
    assert_nothing_left(daemon)


def test_a_cancelled_pull_stops_its_unpack_and_leaves_nothing(daemon: PycriProcess, registry: LocalRegistry) -> None:
    image = make_image([as_layer(zero_file_layer(4096 * MIB))], {"Labels": {"t": "zeros"}})
    pushed = push_tagged(registry.url, "pycri-test/zeros", ("v1",), image)
    snapshots = daemon.base / "root" / "snapshots"
    pull = daemon.images().PullImage.future(request(pushed), timeout=600)
    while not any(p.name.startswith("tmp-") for p in snapshots.iterdir()):
        assert not pull.done(), f"the pull ended before its unpack was seen: {pull.exception()}"
        time.sleep(0.01)
    # Mid-unpack, the daemon answers other calls.
    listed = daemon.images().ListImages(api_pb2.ListImagesRequest(), timeout=30)
    assert list(listed.images) == []
    status = daemon.runtime().Status(api_pb2.StatusRequest(), timeout=30)
    assert status.status.conditions
    assert not pull.done(), "the unpack ended before the other calls were answered"
    pull.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        pull.result()
    # The daemon finishes the cancellation after the client has gone: wait until the pull's
    # cleanup has run (its intent is finished), then look.
    while database(daemon.base / "root")["intents"] or visible_state(daemon.base / "root") != NOTHING:
        assert daemon.proc is not None and daemon.proc.poll() is None
        time.sleep(0.05)
    assert_nothing_left(daemon)
    assert os.listdir(snapshots) == []
    log = daemon.log_path.read_text()
    assert "stopped the unpack of a cancelled pull" in log
    assert 'msg="unpacked layer"' not in log


def test_a_daemon_stopped_mid_unpack_leaves_nothing_after_its_next_start(
    daemon: PycriProcess, registry: LocalRegistry
) -> None:
    image = make_image([as_layer(zero_file_layer(4096 * MIB))], {"Labels": {"t": "zeros-stop"}})
    pushed = push_tagged(registry.url, "pycri-test/zeros-stop", ("v1",), image)
    snapshots = daemon.base / "root" / "snapshots"
    pull = daemon.images().PullImage.future(request(pushed), timeout=600)
    while not any(p.name.startswith("tmp-") for p in snapshots.iterdir()):
        assert not pull.done(), f"the pull ended before its unpack was seen: {pull.exception()}"
        time.sleep(0.01)
    assert daemon.stop() == 0
    assert pull.exception() is not None
    daemon.start()
    assert_nothing_left(daemon)
    assert 'msg="unpacked layer"' not in daemon.log_path.read_text()

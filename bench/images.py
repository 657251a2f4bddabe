"""The suite's images, pushed to a docker-registry on 127.0.0.1: busybox for every container, a pause
image for runtimes that run one per pod, the names critest's benchmarks ask for, and the
multi-layer image of the pull scenario (bench/pull.py builds it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pull import build_image

from tests.support.busybox_images import busybox_layer, push_tagged
from tests.support.daemon import remove_tree, short_tempdir
from tests.support.oci_images import make_image
from tests.support.registry import LocalRegistry

# Where critest's benchmarks look once given `-registry-prefix <registry host>` (see scenario_critest).
CRITEST_REPOSITORIES = ("e2e-test-images/busybox", "docker/library/busybox")


@dataclass(frozen=True)
class BigImage:
    reference: str
    config_digest: str
    size: int
    layers: int
    files: int


@dataclass(frozen=True)
class BenchImages:
    registry_host: str
    busybox: str
    pause: str
    big: BigImage

    def critest_image(self, repository: str) -> str:
        return f"{self.registry_host}/{repository}:latest"


def push_images(registry_url: str, big_image_scale: float) -> BenchImages:
    base = [busybox_layer()]
    busybox = make_image(base, {"Cmd": ["sh"], "Labels": {"org.pycri.bench.image": "busybox"}})
    pause = make_image(base, {"Entrypoint": ["/bin/sleep", "infinity"], "Labels": {"org.pycri.bench.image": "pause"}})
    # An image of its own: critest removes what it pulls, and a runtime may remove every name of an image ID.
    critest = make_image(base, {"Cmd": ["sh"], "Labels": {"org.pycri.bench.image": "critest"}})
    pushed = push_tagged(registry_url, "pycri-bench/busybox", ("latest",), busybox)
    for repository in CRITEST_REPOSITORIES:
        push_tagged(registry_url, repository, ("latest",), critest)
    pushed_pause = push_tagged(registry_url, "pycri-bench/pause", ("3.10",), pause)
    big, _, files = build_image(big_image_scale)
    pushed_big = push_tagged(registry_url, "pycri-bench/big", ("latest",), big)
    host = pushed.repository.split("/", 1)[0]
    return BenchImages(
        registry_host=host,
        busybox=pushed.reference,
        pause=pushed_pause.reference,
        big=BigImage(pushed_big.reference, big.config_digest, big.size, len(big.layers), files),
    )


@contextlib.contextmanager
def bench_images(big_image_scale: float, registry_url: str | None = None) -> Iterator[BenchImages]:
    """The images on `registry_url`, or on a registry of the suite's own that is removed afterwards."""
    started = time.perf_counter()
    if registry_url is not None:
        images = push_images(registry_url, big_image_scale)
        _built(images, started)
        yield images
        return
    workdir: Path = short_tempdir("bench-registry-")
    try:
        with LocalRegistry(workdir) as registry:
            images = push_images(registry.url, big_image_scale)
            _built(images, started)
            yield images
    finally:
        remove_tree(workdir)


def _built(images: BenchImages, started: float) -> None:
    big = images.big
    print(
        f"images on {images.registry_host}: busybox, pause, critest's names, and {big.reference} "
        f"({big.layers} layers, {big.size / 1e6:.1f} MB, {big.files} files), "
        f"built and pushed in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

"""Pull of the multi-layer image (bench/pull.py builds it), cold and warm, into fresh daemons.

Each iteration starts a daemon of each side with an empty root, syncs dirty pages, times one
PullImage (cold: every blob is downloaded and unpacked), then the same PullImage again (warm:
everything is there already), and stops the daemon. One more fresh daemon per side then gets
`concurrent` PullImage calls of the same image at once: each blob should be downloaded once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import grpc
from images import BenchImages
from peers import IsolatedContainerd
from results import Results

from pycri.api import api_pb2, api_pb2_grpc
from tests.support.daemon import PycriProcess, remove_tree, short_tempdir

COLD_TARGET = 0.7
PULL_TIMEOUT = 600.0
FreshDaemon = Callable[[], AbstractContextManager[str]]


@contextlib.contextmanager
def fresh_pycri() -> Iterator[str]:
    daemon = PycriProcess(short_tempdir("bench-pull-"), settings={"log_level": "info"})
    try:
        daemon.start()
        yield daemon.endpoint
    finally:
        daemon.stop()
        remove_tree(daemon.base)


@contextlib.contextmanager
def isolated_containerd(registry_host: str, sandbox_image: str) -> Iterator[str]:
    containerd = IsolatedContainerd(registry_host, sandbox_image)
    try:
        containerd.start()
        yield containerd.endpoint
    finally:
        containerd.stop()


def fresh_containerd(images: BenchImages) -> FreshDaemon:
    return functools.partial(isolated_containerd, images.registry_host, images.pause)


def pull_once(endpoint: str, image: str, expected_id: str) -> float:
    with grpc.insecure_channel(endpoint) as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        stub.ListImages(api_pb2.ListImagesRequest(), timeout=30)  # the connection is up before the clock starts
        started = time.perf_counter()
        reply = stub.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=PULL_TIMEOUT)
        seconds = time.perf_counter() - started
    if reply.image_ref != expected_id:
        raise RuntimeError(f"{endpoint} pulled {reply.image_ref}, expected {expected_id}")
    return seconds


def pull_concurrently(endpoint: str, image: str, expected_id: str, count: int) -> float:
    with ThreadPoolExecutor(max_workers=count) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: pull_once(endpoint, image, expected_id), range(count)))
        return time.perf_counter() - started


def pulls(side: str, fresh: FreshDaemon, images: BenchImages, iterations: int, concurrent: int,
          results: Results, progress: Callable[[str], None]) -> None:  # fmt: skip
    big = images.big
    cold, warm = [], []
    for iteration in range(iterations):
        with fresh() as endpoint:
            os.sync()
            cold.append(pull_once(endpoint, big.reference, big.config_digest))
            warm.append(pull_once(endpoint, big.reference, big.config_digest))
        progress(f"{side}: pull {iteration + 1}/{iterations}: cold {cold[-1]:.2f} s, warm {warm[-1] * 1e3:.0f} ms")
    with fresh() as endpoint:
        os.sync()
        together = pull_concurrently(endpoint, big.reference, big.config_digest, concurrent)
    label = f"pull of {big.size / 1e6:.0f} MB in {big.layers} layers"
    results.record(side, "pull.cold", f"{label}, cold (median of {iterations})", "s", statistics.median(cold),
                   COLD_TARGET)  # fmt: skip
    results.record(side, "pull.warm", f"{label}, warm (median of {iterations})", "ms", statistics.median(warm) * 1e3)
    results.record(side, "pull.concurrent", f"{label}, {concurrent} pulls at once, cold", "s", together, COLD_TARGET)

"""RemoveImage racing CreateContainer on a real daemon: the create either gets a rootfs whose
snapshots garbage collection spares, or a clear NOT_FOUND; never INTERNAL."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from pycri.api import api_pb2
from pycri.config import Config
from pycri.errors import NotFound
from pycri.image.service import ImageService
from pycri.state.store import Store
from tests.integration.test_image_recovery import config, snapshot_names, source_of, store, two_layer_image
from tests.support.busybox_images import TestImages
from tests.support.pods import Workloads, container_config, shell

ITERATIONS = 60
STAGGER_STEPS = 30
STAGGER_SECONDS = 0.0005


def _create_or_error(work: Workloads, pod_id: str, config: api_pb2.ContainerConfig) -> str | grpc.RpcError:
    try:
        return work.create(next(p for p in work.pods if p.id == pod_id), config)
    except grpc.RpcError as error:
        return error


def test_remove_image_racing_create_container(work: Workloads, test_images: TestImages) -> None:
    image = test_images.busybox.reference
    pod = work.pod("in-use")
    created: list[str] = []
    refused = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_number in range(ITERATIONS):
            work.pull(image)
            config = container_config(f"c{round_number}", image, *shell("test -x /bin/sh && test -d /etc"))
            removing = pool.submit(
                work.images.RemoveImage, api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image))
            )
            # A different head start each round, so the removal lands at every step of the create.
            time.sleep((round_number % STAGGER_STEPS) * STAGGER_SECONDS)
            creating = pool.submit(_create_or_error, work, pod.id, config)
            removing.result()
            outcome = creating.result()
            if isinstance(outcome, grpc.RpcError):
                assert outcome.code() == grpc.StatusCode.NOT_FOUND, outcome.details()
                refused += 1
            else:
                created.append(outcome)
    # Every image removal above collected garbage; the containers made meanwhile still run on whole layers.
    for container_id in created:
        work.start(container_id)
        status = work.wait_for_exit(container_id)
        assert status.exit_code == 0, f"container {container_id[:12]} lost its rootfs: {status.message}"
    assert created or refused
    work.pull(image)


__all__ = ["config", "store"]  # fixtures of test_image_recovery, used here


async def test_a_lease_after_the_sweep_is_refused_and_one_before_it_keeps_the_snapshots(
    config: Config, store: Store
) -> None:
    images = ImageService(config, store)
    image = two_layer_image("leased")
    await images.import_image(source_of(image), ["example.com/leased:v1"], [], "test")
    record = images.find("example.com/leased:v1")
    assert record is not None

    await images.metadata.lease_snapshots("container-before", record.chain_ids)
    await images.remove("example.com/leased:v1")
    assert len(snapshot_names(config)) == len(record.chain_ids)

    await images.metadata.release_snapshots("container-before")
    await images.collect_garbage()
    assert snapshot_names(config) == []
    with pytest.raises(NotFound, match="pull the image again"):
        await images.metadata.lease_snapshots("container-after", record.chain_ids)
    assert await images.metadata.referenced() == (set(), set())

"""Image volumes: another image's files mounted read-only into a container."""

from __future__ import annotations

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import rpc_error
from tests.support.busybox_images import TestImages
from tests.support.pods import SLEEP_FOREVER, Workloads, container_config

pytestmark = pytest.mark.integration


def with_volume(test_images: TestImages, readonly: bool = True, sub_path: str = "") -> api_pb2.ContainerConfig:
    volume = api_pb2.Mount(
        container_path="/volume",
        readonly=readonly,
        image=api_pb2.ImageSpec(image=test_images.user.reference),
        image_sub_path=sub_path,
    )
    return container_config("reader", test_images.busybox.reference, *SLEEP_FOREVER, mounts=[volume])


def test_image_volume_is_mounted_read_only_and_reported(work: Workloads, test_images: TestImages) -> None:
    pod = work.pod("volumes")
    container_id = work.run(pod, with_volume(test_images))
    assert "pycri:x:1000" in work.output(container_id, "cat", "/volume/etc/passwd")
    assert work.exec(container_id, "touch", "/volume/new").exit_code != 0
    mounts = {m.container_path: m for m in work.status(container_id).mounts}
    assert mounts["/volume"].image.image_ref == test_images.user.image_id
    work.remove(container_id)
    assert work.container_mounts() == []


def test_image_volume_sub_path(work: Workloads, test_images: TestImages) -> None:
    pod = work.pod("subpath")
    container_id = work.run(pod, with_volume(test_images, sub_path="etc"))
    assert "passwd" in work.output(container_id, "ls", "/volume").split()


@pytest.mark.parametrize(
    ("readonly", "sub_path", "field"),
    [(False, "", "readonly"), (True, "not-there", "image_sub_path"), (True, "../..", "image_sub_path")],
)
def test_bad_image_volumes_are_refused(
    work: Workloads, test_images: TestImages, readonly: bool, sub_path: str, field: str
) -> None:
    pod = work.pod("refused")
    error = rpc_error(work.create, pod, with_volume(test_images, readonly, sub_path))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"mounts[0].{field}" in error.details()
    assert work.container_dirs() == [] and work.container_mounts() == []

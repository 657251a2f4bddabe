"""crictl pull / images / inspecti / rmi / imagefsinfo against pycri."""

import json

import pytest

from tests.support.busybox_images import TestImages
from tests.support.crictl import crictl, crictl_ok, needs_crictl
from tests.support.daemon import PycriProcess

pytestmark = [pytest.mark.integration, needs_crictl]


def test_crictl_image_commands(pycri: PycriProcess, test_images: TestImages) -> None:
    image = test_images.busybox
    assert image.image_id in crictl_ok(pycri.endpoint, "pull", image.reference)
    crictl_ok(pycri.endpoint, "pull", image.tagged("1.0"))

    listed = json.loads(crictl_ok(pycri.endpoint, "images", "-o", "json"))["images"]
    assert [i["id"] for i in listed] == [image.image_id]
    assert sorted(listed[0]["repoTags"]) == sorted([image.reference, image.tagged("1.0")])
    assert image.image_id.removeprefix("sha256:")[:13] in crictl_ok(pycri.endpoint, "images")

    inspected = json.loads(crictl_ok(pycri.endpoint, "inspecti", image.reference))
    assert inspected["status"]["id"] == image.image_id
    assert inspected["info"]["imageSpec"]["config"]["Cmd"] == ["sh"]

    fs_info = json.loads(crictl_ok(pycri.endpoint, "imagefsinfo", "-o", "json"))
    assert int(fs_info["status"]["imageFilesystems"][0]["usedBytes"]["value"]) > 1_000_000

    crictl_ok(pycri.endpoint, "rmi", image.tagged("1.0"))
    assert image.image_id in crictl_ok(pycri.endpoint, "images", "-q")
    crictl_ok(pycri.endpoint, "rmi", image.reference)
    assert crictl_ok(pycri.endpoint, "images", "-q").strip() == ""


def test_crictl_pull_of_missing_image_fails_clearly(pycri: PycriProcess, test_images: TestImages) -> None:
    done = crictl(pycri.endpoint, "pull", f"{test_images.registry_host}/pycri-test/absent:1")
    assert done.returncode != 0
    assert "NotFound" in done.stderr and "pycri-test/absent" in done.stderr

"""Mounts that CDI devices and NRI plugins add to a container of a pod in a user namespace, with
real runc: pycri stages each of them ID-mapped like the CRI mounts kubelet asks to be, so files of
the host's root show as root's inside (not nobody's). A device node is runc's to bind from the host
at its own path; a device the host has not at that path, and a mount that cannot be ID-mapped,
fail the create with FAILED_PRECONDITION naming them and leave nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.nri.pb import api_pb2 as nri
from tests.integration.test_nri import PluginLoop
from tests.integration.test_sandbox_support import Node, rpc_error, running_node
from tests.integration.test_userns import in_pod, userns_pod
from tests.support.busybox_images import TestImages
from tests.support.daemon import mounts_under, remove_tree, short_tempdir
from tests.support.nri_plugin import RecordingPlugin
from tests.support.pods import SLEEP_FOREVER, Workloads, container_config, workloads_on

pytestmark = pytest.mark.integration

KIND = "userns.example/device"


@pytest.fixture(scope="module")
def host_files() -> Iterator[Path]:
    """Files of the host's root (0:0) for the devices and the plugin to mount, and the CDI spec."""
    base = short_tempdir("pycri-userns-dev-")
    (base / "vendor.conf").write_text("vendor setting\n")
    (base / "lib").mkdir()
    (base / "lib" / "libvendor.so").write_text("not really a library\n")
    (base / "cdi").mkdir()
    edits = {
        "deviceNodes": [{"path": "/dev/full"}],
        "mounts": [
            {"hostPath": str(base / "vendor.conf"), "containerPath": "/etc/vendor.conf", "options": ["ro", "bind"]},
            {"hostPath": str(base / "lib"), "containerPath": "/opt/vendor/lib", "options": ["ro", "rbind"]},
        ],
    }
    missing = {"mounts": [{"hostPath": str(base / "gone"), "containerPath": "/opt/gone", "options": ["rbind"]}]}
    renamed = {"deviceNodes": [{"path": "/dev/vendor-null", "hostPath": "/dev/null"}]}
    spec = {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [
            {"name": "files", "containerEdits": edits},
            {"name": "missing", "containerEdits": missing},
            {"name": "renamed", "containerEdits": renamed},
        ],
    }
    (base / "cdi" / "vendor.json").write_text(json.dumps(spec))
    yield base
    remove_tree(base)


@pytest.fixture(scope="module")
def node(test_images: TestImages, host_files: Path) -> Iterator[Node]:
    settings = {
        "runtime": {"pause_image": test_images.pause.reference},
        "cdi": {"spec_dirs": [str(host_files / "cdi")]},
        "nri": {"enable": True, "socket_path": str(host_files / "nri.sock")},
    }
    with running_node(settings) as running:
        running.base.chmod(0o711)  # the pods' roots walk through it (mkdtemp makes it 0700)
        with workloads_on(running) as workloads:
            for image in (test_images.busybox, test_images.pause):
                workloads.pull(image.reference)
        yield running


@pytest.fixture
def work(node: Node) -> Iterator[Workloads]:
    with workloads_on(node) as workloads:
        yield workloads
    assert mounts_under(node.base) == [], "removing the pods left mounts"


def test_cdi_mounts_of_root_owned_files_are_root_owned_inside(work: Workloads, test_images: TestImages) -> None:
    pod = userns_pod(work, "cdi-userns")
    config = in_pod(pod, container_config("app", test_images.busybox.reference, *SLEEP_FOREVER))
    config.CDI_devices.add(name=f"{KIND}=files")
    container_id = work.run(pod, config)

    owners = work.output(container_id, "stat", "-c", "%u:%g", "/etc/vendor.conf", "/opt/vendor/lib/libvendor.so")
    assert owners.split() == ["0:0", "0:0"], "a CDI mount's files show as nobody's inside"
    assert work.output(container_id, "cat", "/etc/vendor.conf") == "vendor setting\n"
    assert work.output(container_id, "head", "-c", "3", "/dev/full") == "\0\0\0"  # runc binds the host's node
    # The staged mounts served runc's binds and are gone from the host; only the rootfs stays.
    assert [path.name for path in work.container_mounts()] == ["rootfs"]


def test_nri_plugin_mounts_are_id_mapped(
    node: Node, work: Workloads, test_images: TestImages, host_files: Path
) -> None:
    mount = nri.Mount(destination="/plugin", type="bind", source=str(host_files / "lib"), options=["rbind", "ro"])
    reply = nri.CreateContainerResponse(adjust=nri.ContainerAdjustment(mounts=[mount]))
    plugins = PluginLoop()
    try:
        plugin = plugins.connect(
            RecordingPlugin("mounter", "50", events=[nri.CREATE_CONTAINER], replies={"CreateContainer": reply}),
            Path(node.daemon.settings["nri"]["socket_path"]),
        )
        try:
            pod = userns_pod(work, "nri-userns")
            config = in_pod(pod, container_config("app", test_images.busybox.reference, *SLEEP_FOREVER))
            container_id = work.run(pod, config)
        finally:
            plugins.close(plugin)
    finally:
        plugins.stop()
    assert work.output(container_id, "stat", "-c", "%u:%g", "/plugin/libvendor.so").strip() == "0:0"
    assert work.output(container_id, "cat", "/plugin/libvendor.so") == "not really a library\n"


@pytest.mark.parametrize(
    ("device", "named"),
    [
        ("missing", "mount '/opt/gone' (from '{base}/gone')"),
        ("renamed", "device /dev/vendor-null (c 1:3): in a pod's user namespace runc binds the host's device node"),
    ],
)
def test_what_the_user_namespace_cannot_take_fails_the_create_and_leaves_nothing(
    work: Workloads, test_images: TestImages, host_files: Path, device: str, named: str
) -> None:
    pod = userns_pod(work, f"cdi-{device}")
    config = in_pod(pod, container_config("app", test_images.busybox.reference, *SLEEP_FOREVER))
    config.CDI_devices.add(name=f"{KIND}={device}")
    error = rpc_error(work.create, pod, config)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert named.format(base=host_files) in error.details()
    assert work.list(pod_sandbox_id=pod.id) == []
    assert work.container_dirs() == [] and work.container_mounts() == [] and work.runc_ids() == []
    assert not os.path.lexists(host_files / "gone")

"""CDI devices through a real pycri, runc and device cgroup: specs of the test's own (JSON and
YAML, in two spec dirs) expose the host's /dev/null and /dev/zero under vendor names."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_sandbox_support import Node, running_node
from tests.support.busybox_images import TestImages
from tests.support.pods import SLEEP_FOREVER, Workloads, container_config, workloads_on

pytestmark = pytest.mark.integration

NULL = os.stat("/dev/null").st_rdev
# Not among the devices every container may use, so only its CDI rule opens it; reading it is harmless.
LATENCY = Path("/dev/cpu_dma_latency")

# /etc/cdi-like dir: device a is /dev/null at /dev/vendor-a, b is overridden by the later dir.
STATIC_SPEC = {
    "cdiVersion": "0.6.0",
    "kind": "vendor.example/device",
    "containerEdits": {"env": ["VENDOR_SPEC=static"]},
    "devices": [
        {
            "name": "a",
            "containerEdits": {
                "deviceNodes": [{"path": "/dev/vendor-a", "hostPath": "/dev/null"}],
                "env": ["VENDOR_DEVICE_A=1"],
            },
        },
        {"name": "b", "containerEdits": {"env": ["VENDOR_B_FROM=static"]}},
    ],
}
# /var/run/cdi-like dir, YAML: b here wins; z is /dev/cpu_dma_latency, readable only (its cgroup rule says r).
DYNAMIC_SPEC = """\
cdiVersion: 1.1.0
kind: vendor.example/device
devices:
- name: b
  containerEdits:
    env: [VENDOR_B_FROM=dynamic]
- name: z
  containerEdits:
    deviceNodes:
    - path: /dev/vendor-z
      hostPath: /dev/cpu_dma_latency
      permissions: r
"""


@pytest.fixture(scope="module")
def spec_dirs() -> Iterator[list[Path]]:
    base = Path(tempfile.mkdtemp(prefix="pycri-cdi-"))
    static, dynamic = base / "etc-cdi", base / "run-cdi"
    static.mkdir()
    dynamic.mkdir()
    (static / "vendor.json").write_text(json.dumps(STATIC_SPEC))
    (dynamic / "vendor.yaml").write_text(DYNAMIC_SPEC)
    yield [static, dynamic]
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def node(test_images: TestImages, spec_dirs: list[Path]) -> Iterator[Node]:
    settings = {
        "runtime": {"pause_image": test_images.pause.reference},
        "cdi": {"spec_dirs": [str(directory) for directory in spec_dirs]},
    }
    with running_node(settings) as running:
        with workloads_on(running) as workloads:
            workloads.pull(test_images.busybox.reference)
        yield running


def _env(work: Workloads, container_id: str) -> dict[str, str]:
    lines = work.output(container_id, "env").splitlines()
    return dict(line.partition("=")[::2] for line in lines)


def test_device_by_field_is_a_node_with_its_env_and_cgroup_rule(work: Workloads, busybox: str) -> None:
    pod = work.pod("cdi-field")
    config = container_config("app", busybox, *SLEEP_FOREVER)
    config.CDI_devices.add(name="vendor.example/device=a")
    container_id = work.run(pod, config)

    listing = work.output(container_id, "ls", "-l", "/dev/vendor-a")
    assert listing.startswith("c") and listing.split()[4:6] == [f"{os.major(NULL)},", str(os.minor(NULL))]
    assert work.exec(container_id, "sh", "-c", "echo x > /dev/vendor-a").exit_code == 0
    env = _env(work, container_id)
    assert (env["VENDOR_SPEC"], env["VENDOR_DEVICE_A"]) == ("static", "1")

    linux = work.info(container_id)["runtimeSpec"]["linux"]
    assert {"path": "/dev/vendor-a", "type": "c", "major": os.major(NULL), "minor": os.minor(NULL)}.items() <= next(
        device for device in linux["devices"] if device["path"] == "/dev/vendor-a"
    ).items()
    rule = {"allow": True, "type": "c", "major": os.major(NULL), "minor": os.minor(NULL), "access": "rwm"}
    assert rule in linux["resources"]["devices"]


@pytest.mark.skipif(not LATENCY.is_char_device(), reason=f"{LATENCY} is not on this host")
def test_devices_by_annotation_from_the_later_yaml_dir(work: Workloads, busybox: str) -> None:
    pod = work.pod("cdi-annotation")
    annotations = {"cdi.k8s.io/vendor": "vendor.example/device=b,vendor.example/device=z"}
    container_id = work.run(pod, container_config("app", busybox, *SLEEP_FOREVER, annotations=annotations))

    assert _env(work, container_id)["VENDOR_B_FROM"] == "dynamic"
    assert work.output(container_id, "ls", "-l", "/dev/vendor-z").startswith("c")
    # The device cgroup lets the container read the node but not open it for writing.
    assert work.exec(container_id, "head", "-c", "4", "/dev/vendor-z").exit_code == 0
    denied = work.exec(container_id, "sh", "-c", "echo 0 > /dev/vendor-z")
    assert denied.exit_code != 0 and b"Operation not permitted" in denied.stderr


@pytest.mark.parametrize(
    ("field", "annotations", "named"),
    [
        ("vendor.example/device=nope", {}, "vendor.example/device=nope"),
        ("", {"cdi.k8s.io/x": "vendor.example/device=a,other.example/gpu=0"}, "other.example/gpu=0"),
        ("gpu0", {}, "CDI_devices[0].name: 'gpu0'"),
    ],
)
def test_unknown_device_is_invalid_argument_and_leaves_nothing(
    work: Workloads, busybox: str, field: str, annotations: dict[str, str], named: str
) -> None:
    pod = work.pod("cdi-unknown")
    config = container_config("app", busybox, *SLEEP_FOREVER, annotations=annotations)
    if field:
        config.CDI_devices.add(name=field)
    with pytest.raises(grpc.RpcError) as err:
        work.create(pod, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details()
    assert work.list(pod_sandbox_id=pod.id) == []
    assert work.container_dirs() == []
    assert work.runc_ids() == []


def test_a_spec_added_while_running_is_seen_by_the_next_create(
    work: Workloads, busybox: str, spec_dirs: list[Path]
) -> None:
    pod = work.pod("cdi-late")
    late = spec_dirs[1] / "late.json"
    config = container_config("app", busybox, *SLEEP_FOREVER)
    config.CDI_devices.add(name="late.example/thing=one")
    with pytest.raises(grpc.RpcError):
        work.create(pod, config)
    doc = {
        "cdiVersion": "0.3.0",
        "kind": "late.example/thing",
        "devices": [{"name": "one", "containerEdits": {"env": ["LATE=1"]}}],
    }
    late.write_text(json.dumps(doc))
    try:
        container_id = work.run(pod, config)
        assert _env(work, container_id)["LATE"] == "1"
    finally:
        late.unlink()
    assert work.status(container_id).state == api_pb2.ContainerState.CONTAINER_RUNNING

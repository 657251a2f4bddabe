"""Pods in a user namespace across crashes and restarts: pycri killed while it makes the pod's
namespaces or a container's ID-mapped mounts leaves nothing once restarted, and a pod whose
user namespace is pinned stays usable after a clean restart."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from pycri.api import api_pb2
from tests.integration.test_userns import HOST_ROOT, userns_options
from tests.support.busybox_images import TestImages
from tests.support.daemon import mounts_under
from tests.support.fault_node import FaultNode, fault_node
from tests.support.leaks import take, wait_for_no_leaks
from tests.support.pods import SLEEP_FOREVER, Pod, container_config

pytestmark = pytest.mark.integration

READY = api_pb2.PodSandboxState.SANDBOX_READY


def userns_pod_config(fault: FaultNode) -> api_pb2.PodSandboxConfig:
    config = fault.work.pod_config("userns")
    namespaces = config.linux.security_context.namespace_options
    namespaces.userns_options.CopyFrom(userns_options())
    namespaces.pid = api_pb2.NamespaceMode.POD  # with a pause process in the user namespace too
    return config


def sleeper(fault: FaultNode, pod: Pod, name: str = "sleeper") -> api_pb2.ContainerConfig:
    """A container of the pod with an ID-mapped volume: a dir of root's on the host."""
    data = fault.daemon.base / "data"
    data.mkdir(exist_ok=True)
    (data / "file").touch()
    mapping = api_pb2.IDMapping(container_id=0, host_id=HOST_ROOT, length=65536)
    volume = api_pb2.Mount(container_path="/data", host_path=str(data), uidMappings=[mapping], gidMappings=[mapping])
    config = container_config(name, fault.images.busybox.reference, *SLEEP_FOREVER, mounts=[volume])
    config.linux.security_context.namespace_options.CopyFrom(pod.config.linux.security_context.namespace_options)
    return config


@contextlib.contextmanager
def userns_node(test_images: TestImages, point: str = "") -> Iterator[FaultNode]:
    """A fault node the pods' roots may walk through (mkdtemp makes its base 0700); once the
    test is done every pod is removed and nothing may be left."""
    with fault_node(test_images, point) as fault:
        fault.daemon.base.chmod(0o711)
        fault.pull_images()
        baseline = take(fault.daemon)
        yield fault
        fault.remove_everything()
        wait_for_no_leaks(fault.daemon, baseline)


@pytest.mark.parametrize("point", ["run_pod_sandbox.host_side", "run_pod_sandbox.pause"])
def test_killed_while_making_the_pod_leaves_nothing(point: str, test_images: TestImages) -> None:
    with userns_node(test_images, point) as fault:
        config = userns_pod_config(fault)
        fault.kill_during(point, lambda: fault.work.run_pod(config))
        fault.restart_unarmed()
        assert fault.pods() == [] and mounts_under(fault.daemon.base) == []
        pod = fault.work.run_pod(config)
        assert fault.work.pod_status(pod.id).state == READY


@pytest.mark.parametrize("point", ["create_container.rootfs", "create_container.bundle"])
def test_killed_while_making_id_mapped_mounts_leaves_nothing(point: str, test_images: TestImages) -> None:
    with userns_node(test_images, point) as fault:
        pod = fault.work.run_pod(userns_pod_config(fault))
        containers = fault.daemon.base / "root" / "userns" / "containers"
        fault.kill_during(point, lambda: fault.work.create(pod, sleeper(fault, pod)))
        assert [path.name for path in mounts_under(containers)].count("0") == 1, "no ID-mapped mount was staged"
        fault.restart_unarmed()
        assert fault.work.list() == [] and mounts_under(containers) == []
        container_id = fault.work.run(pod, sleeper(fault, pod))
        assert fault.work.output(container_id, "stat", "-c", "%u", "/data/file").strip() == "0"
        assert mounts_under(containers) == [containers / container_id / "rootfs"]


def test_pod_survives_a_restart_and_takes_new_containers(test_images: TestImages) -> None:
    with userns_node(test_images) as fault:
        pod = fault.work.run_pod(userns_pod_config(fault))
        first = fault.work.run(pod, sleeper(fault, pod))
        fault.restart_unarmed()  # the root dir is narrowed at start and opened to the pods' roots again
        assert fault.work.pod_status(pod.id).state == READY
        second = fault.work.run(pod, sleeper(fault, pod, "second"))
        for container_id in (first, second):
            uid_map = fault.work.output(container_id, "cat", "/proc/self/uid_map").split()
            assert uid_map == ["0", str(HOST_ROOT), "65536"]

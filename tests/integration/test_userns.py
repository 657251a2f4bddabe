"""Pods in a user namespace of their own (hostUsers: false), with real runc: the mappings seen
inside, the owners of the rootfs, pod files and volumes, who owns the pod's namespaces, what a
bad request is refused with, and that nothing is left once a pod is gone."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from pycri.userns.mounts import idmap_problem
from tests.integration.test_sandbox_support import Node, rpc_error
from tests.support.busybox_images import TestImages
from tests.support.daemon import mounts_under
from tests.support.pods import SLEEP_FOREVER, Pod, Workloads, container_config, node_with_images, workloads_on

pytestmark = pytest.mark.integration

HOST_ROOT = 100000
MAPPING = api_pb2.IDMapping(container_id=0, host_id=HOST_ROOT, length=65536)
NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace


@pytest.fixture(scope="module")
def node(test_images: TestImages) -> Iterator[Node]:
    """A node whose base dir the pods' roots may walk through (mkdtemp makes it 0700)."""
    with node_with_images(test_images) as running:
        running.base.chmod(0o711)
        yield running


@pytest.fixture
def work(node: Node) -> Iterator[Workloads]:
    with workloads_on(node) as workloads:
        yield workloads
    assert mounts_under(node.base) == [], "removing the pods left mounts"


def userns_options(
    mode: int = api_pb2.NamespaceMode.POD, mappings: tuple[api_pb2.IDMapping, ...] = (MAPPING,)
) -> api_pb2.UserNamespace:
    return api_pb2.UserNamespace(mode=mode, uids=list(mappings), gids=list(mappings))


def userns_pod(work: Workloads, name: str, shared_pid: bool = False) -> Pod:
    """A pod in a user namespace of its own, with a namespaced sysctl (set from the host)."""
    config = work.pod_config(name)
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    namespaces = config.linux.security_context.namespace_options
    namespaces.userns_options.CopyFrom(userns_options())
    if shared_pid:
        namespaces.pid = api_pb2.NamespaceMode.POD
    return work.run_pod(config)


def in_pod(pod: Pod, config: api_pb2.ContainerConfig) -> api_pb2.ContainerConfig:
    """The container asks for its pod's user namespace, as kubelet sends it."""
    pod_options = pod.config.linux.security_context.namespace_options
    config.linux.security_context.namespace_options.userns_options.CopyFrom(pod_options.userns_options)
    return config


def owner_userns_inode(namespace: Path) -> int:
    fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
    finally:
        os.close(fd)
    try:
        return os.fstat(owner).st_ino
    finally:
        os.close(owner)


def pod_state_dir(work: Workloads, pod: Pod) -> Path:
    return work.state_dir / "sandboxes" / pod.id


def test_status_offers_user_namespaces_on_runc(work: Workloads) -> None:
    reply = work.runtime.Status(api_pb2.StatusRequest(), timeout=30)
    handlers = {handler.name: handler.features for handler in reply.runtime_handlers}
    assert handlers[""].user_namespaces and handlers["runc"].user_namespaces
    assert not reply.features.user_namespaces_host_network


@pytest.mark.parametrize("shared_pid", [False, True], ids=["own-pid", "pause"])
def test_container_runs_mapped_in_the_pods_namespaces(
    work: Workloads, test_images: TestImages, shared_pid: bool
) -> None:
    pod = userns_pod(work, "userns", shared_pid=shared_pid)
    state = pod_state_dir(work, pod)
    userns_inode = os.stat(state / "userns").st_ino
    for kind in ("netns", "ipc", "uts"):
        assert owner_userns_inode(state / kind) == userns_inode, f"the pod's {kind} is not its user namespace's"

    container_id = work.run(pod, in_pod(pod, container_config("app", test_images.busybox.reference, *SLEEP_FOREVER)))
    assert work.output(container_id, "cat", "/proc/self/uid_map").split() == ["0", str(HOST_ROOT), "65536"]
    assert work.output(container_id, "cat", "/proc/self/gid_map").split() == ["0", str(HOST_ROOT), "65536"]
    owners = work.output(container_id, "stat", "-c", "%u:%g", "/", "/bin", "/etc/passwd", "/etc/hosts").split()
    assert owners == ["0:0"] * 4, "the rootfs and the pod's files are not root's inside"
    assert work.output(container_id, "hostname").strip() == "userns"
    assert work.output(container_id, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "0"
    pid = work.info(container_id)["pid"]
    assert os.stat(f"/proc/{pid}/ns/user").st_ino == userns_inode
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(state / "netns").st_ino
    assert os.stat(f"/proc/{pid}").st_uid == HOST_ROOT, "root inside is not the mapped host ID"

    work.output(container_id, "touch", "/written")
    layers = work.root_dir / "userns" / "containers" / container_id
    upper = layers / "upper" / "written"
    assert (upper.stat().st_uid, upper.stat().st_gid) == (HOST_ROOT, HOST_ROOT)
    assert (stat.S_IMODE(layers.stat().st_mode), layers.stat().st_gid) == (0o710, HOST_ROOT)
    work.remove_pod(pod.id)
    assert not state.exists() and mounts_under(work.node.base) == []


def test_only_the_root_dir_and_the_user_namespace_subtree_are_searchable(
    work: Workloads, test_images: TestImages
) -> None:
    """The pods' roots reach their rootfs through <root>/userns; pycri's other dirs stay root's
    alone, however many containers run in user namespaces."""
    pod = userns_pod(work, "modes", shared_pid=True)
    work.run(pod, in_pod(pod, container_config("app", test_images.busybox.reference, *SLEEP_FOREVER)))
    root, state = work.root_dir, work.state_dir
    search_only = [root, root / "userns", root / "userns" / "containers", root / "userns" / "sandboxes"]
    assert {str(path): stat.S_IMODE(path.stat().st_mode) for path in search_only} == dict.fromkeys(
        map(str, search_only), 0o711
    )
    private = [root / "containers", root / "sandboxes", root / "snapshots", state, state / "sandboxes"]
    assert {str(path): stat.S_IMODE(path.stat().st_mode) for path in private} == dict.fromkeys(map(str, private), 0o700)
    pause_layers = root / "userns" / "sandboxes" / pod.id
    assert (stat.S_IMODE(pause_layers.stat().st_mode), pause_layers.stat().st_gid) == (0o710, HOST_ROOT)
    assert mounts_under(pause_layers) == [pause_layers / "rootfs"]


def test_host_path_volumes_plain_and_id_mapped(work: Workloads, test_images: TestImages, tmp_path: Path) -> None:
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    for directory in (plain, mapped):
        directory.mkdir()
        (directory / "file").write_text("data\n")
    os.chown(plain, HOST_ROOT, HOST_ROOT)  # without a mapping the pod's root writes only where its host ID may
    os.chown(plain / "file", HOST_ROOT + 7, HOST_ROOT + 8)
    os.chown(mapped / "file", 7, 8)
    volumes = [
        api_pb2.Mount(container_path="/plain", host_path=str(plain)),
        api_pb2.Mount(container_path="/mapped", host_path=str(mapped), uidMappings=[MAPPING], gidMappings=[MAPPING]),
    ]
    pod = userns_pod(work, "volumes")
    config = container_config("app", test_images.busybox.reference, *SLEEP_FOREVER, mounts=volumes)
    container_id = work.run(pod, in_pod(pod, config))
    assert work.output(container_id, "stat", "-c", "%u:%g", "/plain/file").strip() == "7:8"
    assert work.output(container_id, "stat", "-c", "%u:%g", "/mapped/file").strip() == "7:8"
    work.output(container_id, "touch", "/mapped/new", "/plain/new")
    assert (os.stat(mapped / "new").st_uid, os.stat(plain / "new").st_uid) == (0, HOST_ROOT)
    assert work.container_mounts() == [work.root_dir / "userns" / "containers" / container_id / "rootfs"]


def test_image_volume_is_root_owned_inside(work: Workloads, test_images: TestImages) -> None:
    volume = api_pb2.Mount(
        container_path="/volume", readonly=True, image=api_pb2.ImageSpec(image=test_images.user.reference)
    )
    pod = userns_pod(work, "imagevol")
    config = container_config("app", test_images.busybox.reference, *SLEEP_FOREVER, mounts=[volume])
    container_id = work.run(pod, in_pod(pod, config))
    assert work.output(container_id, "stat", "-c", "%u:%g", "/volume/etc/passwd").strip() == "0:0"
    assert "pycri:x:1000" in work.output(container_id, "cat", "/volume/etc/passwd")


BAD_PODS = {
    "two-mappings": (userns_options(mappings=(MAPPING, MAPPING)), "uids: exactly one mapping"),
    "no-root": (
        userns_options(mappings=(api_pb2.IDMapping(container_id=1, host_id=HOST_ROOT, length=65536),)),
        "uids[0].container_id",
    ),
    "empty": (
        userns_options(mappings=(api_pb2.IDMapping(container_id=0, host_id=HOST_ROOT, length=0),)),
        "uids[0].length",
    ),
    "overflow": (
        userns_options(mappings=(api_pb2.IDMapping(container_id=0, host_id=2**32 - 10, length=65536),)),
        "uids[0]: host IDs",
    ),
    "container-mode": (api_pb2.UserNamespace(mode=api_pb2.NamespaceMode.CONTAINER), "userns_options.mode: CONTAINER"),
    "target-mode": (api_pb2.UserNamespace(mode=api_pb2.NamespaceMode.TARGET), "userns_options.mode: TARGET"),
    "node-with-mappings": (userns_options(mode=api_pb2.NamespaceMode.NODE), "mode NODE"),
}


@pytest.mark.parametrize("case", sorted(BAD_PODS))
def test_bad_user_namespaces_are_refused_and_leave_nothing(work: Workloads, case: str) -> None:
    options, message = BAD_PODS[case]
    config = work.pod_config("bad")
    config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
    error = rpc_error(work.run_pod, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
    assert work.node.sandbox_dirs() == [] and work.node.sandbox_mounts() == []


def test_host_network_cannot_go_with_a_user_namespace(work: Workloads) -> None:
    config = work.pod_config("hostnet")
    namespaces = config.linux.security_context.namespace_options
    namespaces.userns_options.CopyFrom(userns_options())
    namespaces.network = api_pb2.NamespaceMode.NODE
    error = rpc_error(work.run_pod, config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "namespace_options.network" in error.details()
    assert work.node.sandbox_dirs() == []


def test_a_container_must_ask_for_its_pods_user_namespace(work: Workloads, test_images: TestImages) -> None:
    pod = userns_pod(work, "mismatch")
    other = api_pb2.IDMapping(container_id=0, host_id=200000, length=65536)
    config = container_config("app", test_images.busybox.reference, *SLEEP_FOREVER)
    for options, message in (
        (None, "the container must ask for it"),
        (userns_options(mappings=(other,)), "the mappings differ"),
    ):
        if options is not None:
            config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
        error = rpc_error(work.create, pod, config)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()
    volume = api_pb2.Mount(container_path="/v", host_path="/tmp", uidMappings=[other], gidMappings=[other])
    error = rpc_error(
        work.create, pod, in_pod(pod, container_config("v", test_images.busybox.reference, mounts=[volume]))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mounts[0]: an ID-mapped mount takes the pod sandbox's own mappings" in error.details()
    assert work.container_dirs() == [] and work.container_mounts() == []


def test_the_probe_names_what_cannot_take_id_mapped_layers(tmp_path: Path) -> None:
    scratch = tmp_path / "containers"
    scratch.mkdir()
    (tmp_path / "snapshots").mkdir()
    assert idmap_problem(tmp_path / "snapshots", scratch) is None
    problem = idmap_problem(Path("/proc/sys"), scratch)
    assert problem is not None and "mount_setattr" in problem
    assert list(scratch.iterdir()) == [] and mounts_under(tmp_path) == []

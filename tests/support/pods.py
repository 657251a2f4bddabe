"""Helpers for the container tests: ContainerConfig protos, a client that runs pods and
containers on a test node and removes what it made, and host-side views of a container.

Pods come from `pod_config` of the sandbox test support (own PID namespace per container, no
pause process); the node is `running_node` there: a pycri on a private bridge and subnet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil

from pycri.api import api_pb2, api_pb2_grpc
from pycri.cgroups import host_layout, make_cgroup_manager
from tests.integration.test_sandbox_support import CONTAINER_PID, Node, pod_config, running_node
from tests.support.busybox_images import TestImages
from tests.support.daemon import mounts_under

CREATED = api_pb2.ContainerState.CONTAINER_CREATED
RUNNING = api_pb2.ContainerState.CONTAINER_RUNNING
EXITED = api_pb2.ContainerState.CONTAINER_EXITED
RPC_TIMEOUT = 60.0
WAIT_SECONDS = 30.0
# Keeps a container running until it is stopped (sh as PID 1 ignores SIGTERM: stop with timeout 0).
SLEEP_FOREVER = ("sleep", "3600")

T = TypeVar("T")


def wait_until(probe: Callable[[], T], what: str, timeout: float = WAIT_SECONDS) -> T:
    """Poll `probe` until it returns something truthy, and return that; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def container_config(name: str, image: str, *command: str, **fields: Any) -> api_pb2.ContainerConfig:
    """A container of `image` running `command` (the image's own when empty) in its own PID namespace."""
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image), command=list(command)
    )
    config.linux.security_context.namespace_options.pid = CONTAINER_PID
    config.MergeFrom(api_pb2.ContainerConfig(**fields))
    return config


def shell(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


@dataclass(frozen=True)
class Pod:
    id: str
    config: api_pb2.PodSandboxConfig

    @property
    def log_directory(self) -> Path:
        return Path(self.config.log_directory)


@contextlib.contextmanager
def node_with_images(test_images: TestImages) -> Iterator[Node]:
    """A pycri on a private pod network with the busybox, user and pause test images pulled."""
    with running_node({"runtime": {"pause_image": test_images.pause.reference}}) as node:
        with workloads_on(node) as workloads:
            for image in (test_images.busybox, test_images.user, test_images.pause):
                workloads.pull(image.reference)
        yield node


@dataclass
class Workloads:
    """RuntimeService and ImageService calls for the container tests. `remove_all` removes
    every pod it ran (and so their containers) and the pod cgroups pycri left behind."""

    node: Node
    channel: grpc.Channel
    pods: list[Pod] = field(default_factory=list)

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def root_dir(self) -> Path:
        return self.node.base / "root"

    @property
    def state_dir(self) -> Path:
        return self.node.base / "state"

    def reconnect(self) -> None:
        """A fresh channel, for after the daemon restarted."""
        self.channel.close()
        self.channel = self.node.daemon.channel()

    def pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.images.PullImage(request, timeout=RPC_TIMEOUT).image_ref

    # ---- pods ----

    def pod_config(self, name: str, **fields: Any) -> api_pb2.PodSandboxConfig:
        """A pod of the test namespace with a log directory of its own."""
        log_directory = self.node.base / "logs" / f"{name}-{secrets.token_hex(4)}"
        return pod_config(name, log_directory=str(log_directory), **fields)

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> Pod:
        reply = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT)
        pod = Pod(reply.pod_sandbox_id, config)
        self.pods.append(pod)
        return pod

    def pod(self, name: str, **fields: Any) -> Pod:
        """Run a pod of `pod_config(name, **fields)`."""
        return self.run_pod(self.pod_config(name, **fields))

    def pod_status(self, sandbox_id: str) -> api_pb2.PodSandboxStatus:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        return self.runtime.PodSandboxStatus(request, timeout=RPC_TIMEOUT).status

    def pod_info(self, sandbox_id: str) -> dict[str, Any]:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
        return json.loads(self.runtime.PodSandboxStatus(request, timeout=RPC_TIMEOUT).info["info"])

    def stop_pod(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT)

    def remove_pod(self, sandbox_id: str) -> None:
        request = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        self.runtime.RemovePodSandbox(request, timeout=RPC_TIMEOUT)

    # ---- containers ----

    def create(self, pod: Pod, config: api_pb2.ContainerConfig) -> str:
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
        return self.runtime.CreateContainer(request, timeout=RPC_TIMEOUT).container_id

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT)

    def run(self, pod: Pod, config: api_pb2.ContainerConfig) -> str:
        """Create and start; the container id."""
        container_id = self.create(pod, config)
        self.start(container_id)
        return container_id

    def status(self, container_id: str) -> api_pb2.ContainerStatus:
        request = api_pb2.ContainerStatusRequest(container_id=container_id)
        return self.runtime.ContainerStatus(request, timeout=RPC_TIMEOUT).status

    def info(self, container_id: str) -> dict[str, Any]:
        """The verbose status's info document (pid, cgroupsPath, runtimeSpec, ...)."""
        request = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True)
        return json.loads(self.runtime.ContainerStatus(request, timeout=RPC_TIMEOUT).info["info"])

    def list(self, **filter_fields: Any) -> list[api_pb2.Container]:
        request = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(**filter_fields))
        return list(self.runtime.ListContainers(request, timeout=RPC_TIMEOUT).containers)

    def stop(self, container_id: str, timeout: int = 0) -> None:
        request = api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout)
        self.runtime.StopContainer(request, timeout=RPC_TIMEOUT + timeout)

    def remove(self, container_id: str) -> None:
        self.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT)

    def exec(self, container_id: str, *command: str, timeout: int = 0) -> api_pb2.ExecSyncResponse:
        request = api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(command), timeout=timeout)
        return self.runtime.ExecSync(request, timeout=RPC_TIMEOUT + timeout)

    def output(self, container_id: str, *command: str) -> str:
        """Stdout of a command that must succeed."""
        reply = self.exec(container_id, *command)
        assert reply.exit_code == 0, f"{command} exited {reply.exit_code}: {reply.stderr.decode(errors='replace')}"
        return reply.stdout.decode()

    def wait_for_state(self, container_id: str, state: int) -> api_pb2.ContainerStatus:
        def reached() -> api_pb2.ContainerStatus | None:
            status = self.status(container_id)
            return status if status.state == state else None

        return wait_until(reached, f"container {container_id[:12]} to be {api_pb2.ContainerState.Name(state)}")

    def wait_for_exit(self, container_id: str) -> api_pb2.ContainerStatus:
        return self.wait_for_state(container_id, EXITED)

    def remove_all(self) -> None:
        for pod in self.pods:
            with contextlib.suppress(grpc.RpcError):
                self.remove_pod(pod.id)
            remove_pod_cgroup(pod.id)
        self.pods.clear()

    # ---- what the host sees ----

    def container_dirs(self) -> list[Path]:
        """Per-container directories: writable layers under the root, bundles under the state dir."""
        parents = (self.root_dir / "containers", self.root_dir / "userns" / "containers", self.state_dir / "containers")
        return [entry for parent in parents if parent.exists() for entry in parent.iterdir()]

    def container_mounts(self) -> list[Path]:
        return [*mounts_under(self.root_dir / "containers"), *mounts_under(self.root_dir / "userns" / "containers")]

    def runc_ids(self) -> list[str]:
        """Containers runc keeps state for under this node's runc root."""
        listing = subprocess.run(
            ["runc", "--root", str(self.state_dir / "runc"), "list", "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [entry["id"] for entry in json.loads(listing or "null") or []]


def pod_cgroup(sandbox_id: str) -> str:
    """The cgroup pycri gives a pod kubelet gave no cgroup parent (runtime.cgroup_parent "/pycri")."""
    return f"/pycri/pod-{sandbox_id}"


def remove_pod_cgroup(sandbox_id: str) -> None:
    """Remove the pod cgroup RemovePodSandbox leaves behind (see the xfail test in test_containers.py)."""
    asyncio.run(make_cgroup_manager("cgroupfs", "/pycri", "pod").remove(pod_cgroup(sandbox_id)))


def cgroup_dir(cgroup_path: str, controller: str) -> Path:
    """The cgroup's directory for `controller` (v1), or its one directory on a pure v2 host."""
    layout = host_layout()
    relative = cgroup_path.lstrip("/")
    if layout.unified is not None:
        return layout.unified / relative
    return layout.v1[controller] / relative


def conmons_of(pod: Pod) -> list[psutil.Process]:
    """conmon processes monitoring a container of `pod` (its uid is in every container's --name)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "conmon" and any(pod.config.metadata.uid in arg for arg in cmdline):
            found.append(process)
    return found


@contextlib.contextmanager
def workloads_on(node: Node) -> Iterator[Workloads]:
    workloads = Workloads(node, node.daemon.channel())
    try:
        yield workloads
    finally:
        workloads.remove_all()
        workloads.channel.close()

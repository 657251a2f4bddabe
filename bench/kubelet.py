"""CRI calls the way kubelet makes them, for the benchmarks: pods with kubelet's labels and
annotations, containers created and started one after the other inside a pod, several pods at a
time, and every pod stopped, then removed, at the end."""

from __future__ import annotations

import contextlib
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from pycri.api import api_pb2, api_pb2_grpc
from tests.integration.test_sandbox_support import TEST_NAMESPACE, pod_config
from tests.support.pods import container_config

RPC_TIMEOUT = 120.0
SLEEP_FOREVER = ("sleep", "infinity")
RUNNING = api_pb2.ContainerState.CONTAINER_RUNNING


@dataclass(frozen=True)
class Density:
    pods: int
    containers_per_pod: int
    parallel: int

    @property
    def containers(self) -> int:
        return self.pods * self.containers_per_pod


class Kubelet:
    """Makes pods and containers through CRI as kubelet does, and stops and removes them all."""

    def __init__(self, channel: grpc.Channel, log_root: Path) -> None:
        self.channel = channel
        self.runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        self.images = api_pb2_grpc.ImageServiceStub(channel)
        self.log_root = log_root
        self.pods: list[str] = []

    def pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.images.PullImage(request, timeout=RPC_TIMEOUT).image_ref

    def run_pod(self, index: int, image_ref: str, containers: int) -> None:
        name = f"relist-{index:04d}"
        log_directory = self.log_root / name
        log_directory.mkdir(parents=True)
        config = pod_config(
            name,
            log_directory=str(log_directory),
            labels={"app": "relist", "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": TEST_NAMESPACE},
            annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2024-06-01T00:00:00Z"},
        )
        request = api_pb2.RunPodSandboxRequest(config=config)
        sandbox_id = self.runtime.RunPodSandbox(request, timeout=RPC_TIMEOUT).pod_sandbox_id
        self.pods.append(sandbox_id)
        for number in range(containers):
            self.run_container(sandbox_id, config, f"c{number}", image_ref)

    def run_container(self, sandbox_id: str, pod: api_pb2.PodSandboxConfig, name: str, image_ref: str) -> None:
        pod_labels = {key: value for key, value in pod.labels.items() if key.startswith("io.kubernetes.pod.")}
        config = container_config(
            name,
            image_ref,
            *SLEEP_FOREVER,
            labels={**pod_labels, "io.kubernetes.pod.uid": pod.metadata.uid, "io.kubernetes.container.name": name},
            annotations={
                "io.kubernetes.container.hash": f"{zlib.crc32(name.encode()):08x}",
                "io.kubernetes.container.restartCount": "0",
                "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
                "io.kubernetes.container.terminationMessagePolicy": "File",
                "io.kubernetes.pod.terminationGracePeriod": "30",
            },
            log_path=f"{name}_0.log",
        )
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=pod)
        container_id = self.runtime.CreateContainer(request, timeout=RPC_TIMEOUT).container_id
        self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT)

    def populate(self, density: Density, image_ref: str) -> None:
        with ThreadPoolExecutor(max_workers=density.parallel) as pool:
            runs = [
                pool.submit(self.run_pod, index, image_ref, density.containers_per_pod) for index in range(density.pods)
            ]
            for run in runs:
                run.result()

    def running_containers(self) -> list[api_pb2.Container]:
        request = api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=RUNNING))
        )
        return list(self.runtime.ListContainers(request, timeout=RPC_TIMEOUT).containers)

    def remove_all(self) -> None:
        """Stop, then remove, every pod this client ran (kubelet's order); an error ends no loop early."""
        for sandbox_id in self.pods:
            with contextlib.suppress(grpc.RpcError):
                self.runtime.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
                )
            with contextlib.suppress(grpc.RpcError):
                request = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
                self.runtime.RemovePodSandbox(request, timeout=RPC_TIMEOUT)

"""CRI calls the way kubelet makes them, for the benchmarks.

A pod: RunPodSandbox (kubelet's labels and annotations, a cgroup parent of its own as kubelet's
cgroupfs driver gives, a log directory, DNS config, a PID namespace per container), then
PodSandboxStatus; then for each container ImageStatus, CreateContainer (by image ID, besteffort
resources, kubelet's labels and annotations, a log path) and StartContainer. No probes run.
Removal in kubelet's order: StopContainer for each container, StopPodSandbox, then RemoveContainer
for each and RemovePodSandbox. Every call is timed by method name into a `CallTimes`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from measure import CallTimes

from pycri.api import api_pb2, api_pb2_grpc

RPC_TIMEOUT = 120.0
SLEEP_FOREVER = ("sleep", "infinity")
NAMESPACE = "pycri-bench"
CONTAINER_PID = api_pb2.NamespaceMode.CONTAINER
IMAGE_METHODS = frozenset({"PullImage", "ImageStatus", "ListImages", "RemoveImage", "ImageFsInfo"})
# What a pod start and a pod removal are called in `CallTimes`.
POD_START = "pod start"
POD_REMOVAL = "pod removal"


@dataclass
class Pod:
    id: str
    config: api_pb2.PodSandboxConfig
    containers: list[str] = field(default_factory=list)


class Kubelet:
    """Makes pods and containers as kubelet does; `remove_all()` removes every pod it still holds."""

    def __init__(self, channel: grpc.Channel, log_root: Path, cgroup_top: str, times: CallTimes | None = None) -> None:
        self.runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        self.images = api_pb2_grpc.ImageServiceStub(channel)
        self.log_root = log_root
        self.cgroup_top = cgroup_top
        self.times = times or CallTimes()
        self.pods: dict[str, Pod] = {}

    def call(self, method: str, request: Any) -> Any:
        stub = self.images if method in IMAGE_METHODS else self.runtime
        return self.times.timed(method, lambda: getattr(stub, method)(request, timeout=RPC_TIMEOUT))

    def pull(self, image: str) -> str:
        return str(self.call("PullImage", api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))).image_ref)

    def pod_config(self, name: str) -> api_pb2.PodSandboxConfig:
        uid = secrets.token_hex(16)
        log_directory = self.log_root / f"{NAMESPACE}_{name}_{uid}"
        log_directory.mkdir(parents=True)
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=uid),
            hostname=name,
            log_directory=str(log_directory),
            dns_config=api_pb2.DNSConfig(
                servers=["10.96.0.10"],
                searches=[f"{NAMESPACE}.svc.cluster.local", "svc.cluster.local", "cluster.local"],
                options=["ndots:5"],
            ),
            labels={"app": "bench", "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": NAMESPACE,
                    "io.kubernetes.pod.uid": uid},
            annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2024-06-01T00:00:00Z"},
        )  # fmt: skip
        config.linux.cgroup_parent = f"/{self.cgroup_top}/besteffort/pod{uid}"
        config.linux.security_context.namespace_options.pid = CONTAINER_PID
        return config

    def container_config(self, pod: Pod, name: str, image_id: str) -> api_pb2.ContainerConfig:
        labels = {key: value for key, value in pod.config.labels.items() if key.startswith("io.kubernetes.pod.")}
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image_id),
            command=list(SLEEP_FOREVER),
            envs=[api_pb2.KeyValue(key="KUBERNETES_SERVICE_HOST", value=b"10.96.0.1"),
                  api_pb2.KeyValue(key="KUBERNETES_SERVICE_PORT", value=b"443")],
            labels={**labels, "io.kubernetes.container.name": name},
            annotations={
                "io.kubernetes.container.hash": f"{zlib.crc32(name.encode()):08x}",
                "io.kubernetes.container.restartCount": "0",
                "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
                "io.kubernetes.container.terminationMessagePolicy": "File",
                "io.kubernetes.pod.terminationGracePeriod": "30",
            },
            log_path=f"{name}/0.log",
        )  # fmt: skip
        config.linux.resources.cpu_period = 100000
        config.linux.resources.cpu_shares = 2
        config.linux.resources.oom_score_adj = 1000
        config.linux.security_context.namespace_options.pid = CONTAINER_PID
        return config

    def run_pod(self, name: str, image: str, containers: int) -> Pod:
        started = time.perf_counter()
        config = self.pod_config(name)
        sandbox_id = self.call("RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
        pod = self.pods[sandbox_id] = Pod(sandbox_id, config)
        self.call("PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
        for number in range(containers):
            self.add_container(pod, f"c{number}", image)
        self.times.add(POD_START, time.perf_counter() - started)
        return pod

    def add_container(self, pod: Pod, name: str, image: str) -> str:
        image_status = self.call("ImageStatus", api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)))
        if not image_status.image.id:
            raise RuntimeError(f"{image} is not pulled")
        config = self.container_config(pod, name, image_status.image.id)
        (Path(pod.config.log_directory) / name).mkdir(exist_ok=True)  # kubelet makes the container's log dir
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
        container_id = self.call("CreateContainer", request).container_id
        pod.containers.append(container_id)
        self.call("StartContainer", api_pb2.StartContainerRequest(container_id=container_id))
        return str(container_id)

    def run_pods(self, names: list[str], image: str, containers: int, parallel: int) -> list[Pod]:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            return list(pool.map(lambda name: self.run_pod(name, image, containers), names))

    def add_containers(self, pods: list[Pod], per_pod: int, image: str, parallel: int) -> None:
        """Bring every pod up to `per_pod` containers."""

        def fill(pod: Pod) -> None:
            while len(pod.containers) < per_pod:
                self.add_container(pod, f"c{len(pod.containers)}", image)

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(fill, pods))

    def remove_pod(self, pod: Pod) -> None:
        started = time.perf_counter()
        for container_id in pod.containers:
            self.call("StopContainer", api_pb2.StopContainerRequest(container_id=container_id, timeout=0))
        self.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        for container_id in pod.containers:
            self.call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=container_id))
        self.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        self.pods.pop(pod.id, None)
        self.times.add(POD_REMOVAL, time.perf_counter() - started)

    def remove_pods(self, pods: list[Pod], parallel: int) -> None:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(self.remove_pod, pods))

    def remove_all(self) -> None:
        """Stop and remove every pod still held, untimed; an error ends no loop early (cleanup)."""
        for sandbox_id in list(self.pods):
            for method, request in (
                ("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)),
                ("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)),
            ):
                with contextlib.suppress(grpc.RpcError):
                    getattr(self.runtime, method)(request, timeout=RPC_TIMEOUT)
            self.pods.pop(sandbox_id, None)

"""Density: a node filled step by step, the calls kubelet makes all the time timed at each step, the
daemon's memory at each step, and the removal of everything at the end.

The steps (full run): 10, 20 and 100 pods of one container, then 5 containers in each of the
100 pods (500). At each step, after `settle` idle seconds: the daemon's RSS and PSS and its
monitors' (conmon per container, or a shim per pod), then `calls` timed calls of each kind, one
at a time over one channel after `warmup` untimed ones (fewer, but 30, where they take more than
`budget_seconds`, as the stats calls do at density). The list and stats calls answer with every
pod or container; the status calls, ContainerStats and ListContainers of one pod answer with the
same few entries at every step: their cost must not grow with the node (the growth table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kubelet import Kubelet, Pod
from measure import CallTimes, Latency, Memory, time_calls
from results import Point, Results
from sides import Side

from pycri.api import api_pb2

LIST_TARGET = 1.0
PER_POD_TARGET = 0.2
# Calls whose answer does not grow with the node.
FLAT_CALLS = ("ContainerStatus", "PodSandboxStatus", "ContainerStats", "ListContainers (one pod)")


@dataclass(frozen=True)
class Step:
    pods: int
    containers_per_pod: int

    @property
    def containers(self) -> int:
        return self.pods * self.containers_per_pod

    @property
    def label(self) -> str:
        return f"{self.pods} pods x {self.containers_per_pod}"


@dataclass(frozen=True)
class DensityPlan:
    steps: tuple[Step, ...]
    # Pod counts whose memory makes figures of their own (the per-pod cost uses the last of them).
    memory_pods: tuple[int, ...]
    calls: int
    warmup: int
    # Seconds of timed calls of one kind at most (but 30 calls): the stats calls take long at density.
    budget_seconds: float
    settle_seconds: float
    parallel: int


def cri_calls(kubelet: Kubelet, pods: list[Pod]) -> dict[str, Callable[[], object]]:
    """One call of each kind, on the pod and container in the middle of the node."""
    runtime = kubelet.runtime
    pod = pods[len(pods) // 2]
    sandbox_id, container_id = pod.id, pod.containers[len(pod.containers) // 2]
    pod_status = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
    one_pod = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=sandbox_id))

    def relist() -> None:
        runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest())
        runtime.ListContainers(api_pb2.ListContainersRequest())

    return {
        "Version": lambda: runtime.Version(api_pb2.VersionRequest()),
        "ListPodSandbox": lambda: runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()),
        "ListContainers": lambda: runtime.ListContainers(api_pb2.ListContainersRequest()),
        "relist": relist,
        "ContainerStatus": lambda: runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id)),
        "PodSandboxStatus": lambda: runtime.PodSandboxStatus(pod_status),
        "ContainerStats": lambda: runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=container_id)),
        "ListContainers (one pod)": lambda: runtime.ListContainers(one_pod),
        "ListContainerStats": lambda: runtime.ListContainerStats(api_pb2.ListContainerStatsRequest()),
        "ListPodSandboxStats": lambda: runtime.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest()),
    }


def check_node(kubelet: Kubelet, step: Step) -> None:
    pods = len(kubelet.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items)
    running = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=api_pb2.ContainerState.CONTAINER_RUNNING))
    containers = len(kubelet.runtime.ListContainers(api_pb2.ListContainersRequest(filter=running)).containers)
    if (pods, containers) != (step.pods, step.containers):
        raise RuntimeError(f"{pods} pods and {containers} running containers where {step.label} should be")


def density(side: Side, image: str, plan: DensityPlan, results: Results, progress: Callable[[str], None]) -> None:
    with side.channel() as channel:
        kubelet = side.kubelet(channel)
        try:
            _ramp(side, kubelet, image, plan, results, progress)
        finally:
            kubelet.remove_all()


def _ramp(
    side: Side, kubelet: Kubelet, image: str, plan: DensityPlan, results: Results, progress: Callable[[str], None]
) -> None:
    time.sleep(plan.settle_seconds)
    baseline = side.daemon_memory()
    pods: list[Pod] = []
    at_step: dict[Step, dict[str, Latency]] = {}
    memory_at: dict[int, tuple[Memory | None, Memory]] = {}
    for step in plan.steps:
        progress(f"{side.name}: filling the node to {step.label} ({step.containers} containers)")
        started = time.perf_counter()
        if step.pods > len(pods):
            names = [f"density-{index}" for index in range(len(pods), step.pods)]
            pods += kubelet.run_pods(names, image, 1, plan.parallel)
        kubelet.add_containers(pods, step.containers_per_pod, image, plan.parallel)
        check_node(kubelet, step)
        progress(f"{side.name}: {step.label} made in {time.perf_counter() - started:.1f} s; timing the calls")
        time.sleep(plan.settle_seconds)
        daemon, monitors = side.daemon_memory(), side.monitor_memory()
        if step.containers_per_pod == 1:
            memory_at[step.pods] = (daemon, monitors)
        latencies = {
            name: Latency.of(time_calls(call, plan.calls, plan.warmup, plan.budget_seconds))
            for name, call in cri_calls(kubelet, pods).items()
        }
        for name, latency in latencies.items():
            results.point(side.key, name, Point(step.pods, step.containers, latency.p50 * 1e3, latency.p99 * 1e3))
        at_step[step] = latencies
    last = plan.steps[-1]
    for name, latency in at_step[last].items():
        target = None if name == "Version" else LIST_TARGET
        results.latency(side.key, f"density.{name}", f"{last.label}: {name}", latency, target)
    _memory_figures(side, plan, baseline, memory_at, results)
    daemon = side.daemon_memory()
    if daemon is not None:
        results.memory(side.key, "memory.daemon.full", f"daemon at {last.label}", daemon)
        results.memory(side.key, "memory.monitors.full", f"monitors at {last.label}", side.monitor_memory())
    progress(f"{side.name}: removing {last.pods} pods, {last.containers} containers")
    _removal(kubelet, pods, last, plan.parallel, side.key, results)


def _memory_figures(
    side: Side,
    plan: DensityPlan,
    baseline: Memory | None,
    memory_at: dict[int, tuple[Memory | None, Memory]],
    results: Results,
) -> None:
    if baseline is None:
        results.skip(side.key, "memory.per_pod.pss", "per pod: daemon growth + monitors PSS", "MB",
                     "the daemon's pid is unknown", PER_POD_TARGET)  # fmt: skip
        return
    results.memory(side.key, "memory.daemon.empty", "daemon with no pods, after the start scenarios", baseline)
    for pods in plan.memory_pods:
        daemon, monitors = memory_at[pods]
        assert daemon is not None
        results.memory(side.key, f"memory.daemon.{pods}", f"daemon at {pods} pods", daemon)
        results.memory(side.key, f"memory.monitors.{pods}", f"monitors at {pods} pods", monitors)
    pods = plan.memory_pods[-1]
    daemon, monitors = memory_at[pods]
    assert daemon is not None
    growth = Memory(daemon.rss - baseline.rss, daemon.pss - baseline.pss, 0) + monitors
    per_pod = Memory(growth.rss // pods, growth.pss // pods, 1)
    results.memory(side.key, "memory.per_pod", f"per pod at {pods} pods: daemon growth + monitors", per_pod,
                   PER_POD_TARGET)  # fmt: skip


def _removal(kubelet: Kubelet, pods: list[Pod], step: Step, parallel: int, side: str, results: Results) -> None:
    kubelet.times = times = CallTimes()
    started = time.perf_counter()
    kubelet.remove_pods(pods, parallel)
    seconds = time.perf_counter() - started
    label = f"removal of {step.label}"
    results.record(side, "remove.density.wall", f"{label}: all, {parallel} pods at a time", "s", seconds)
    for method in ("StopContainer", "StopPodSandbox", "RemoveContainer", "RemovePodSandbox"):
        target = 1.0 if method in ("StopPodSandbox", "RemoveContainer") else None
        results.latency(side, f"remove.density.{method}", f"{label}: {method}", times.latency(method), target)

"""Pod-level resources on this host's real cgroups: RunPodSandbox and UpdatePodSandboxResources
set the limits of the pod's own cgroup, refusals change nothing, and the stats carry pressure
and swap where the host keeps them."""

from __future__ import annotations

import grpc
import pytest

from pycri.api import api_pb2
from pycri.cgroups import host_layout
from tests.support.pods import SLEEP_FOREVER, Pod, Workloads, cgroup_dir, container_config, pod_cgroup

pytestmark = pytest.mark.integration

MiB = 1 << 20
Resources = api_pb2.LinuxContainerResources


def update(work: Workloads, sandbox_id: str, resources: Resources, overhead: Resources | None = None) -> None:
    request = api_pb2.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sandbox_id, resources=resources)
    if overhead is not None:
        request.overhead.CopyFrom(overhead)
    work.runtime.UpdatePodSandboxResources(request, timeout=60)


def update_error(work: Workloads, sandbox_id: str, resources: Resources) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        update(work, sandbox_id, resources)
    return refused.value


def pod_file(pod: Pod, controller: str, name: str) -> str:
    """A file of the pod's own cgroup (its v1 controller's, or its one directory on v2)."""
    return (cgroup_dir(pod_cgroup(pod.id), controller) / name).read_text().strip()


def cpu_quota(pod: Pod) -> str:
    if host_layout().unified is not None:
        return pod_file(pod, "cpu", "cpu.max").split()[0]
    return pod_file(pod, "cpu", "cpu.cfs_quota_us")


def memory_limit(pod: Pod) -> int:
    if host_layout().unified is not None:
        text = pod_file(pod, "memory", "memory.max")
        return -1 if text == "max" else int(text)
    value = int(pod_file(pod, "memory", "memory.limit_in_bytes"))
    return -1 if value >= 1 << 62 else value


def limited_pod(work: Workloads, busybox: str, name: str, resources: Resources) -> tuple[Pod, str]:
    config = work.pod_config(name)
    config.linux.resources.CopyFrom(resources)
    pod = work.run_pod(config)
    return pod, work.run(pod, container_config("app", busybox, *SLEEP_FOREVER))


def test_a_pod_starts_with_its_limits(work: Workloads, busybox: str) -> None:
    pod, _ = limited_pod(work, busybox, "limited", Resources(cpu_quota=50_000, memory_limit_in_bytes=64 * MiB))

    assert cpu_quota(pod) == "50000"
    assert memory_limit(pod) == 64 * MiB


def test_an_update_changes_the_pod_cgroup_and_the_record(work: Workloads, busybox: str) -> None:
    pod, container_id = limited_pod(
        work, busybox, "resized", Resources(cpu_quota=50_000, memory_limit_in_bytes=64 * MiB)
    )
    overhead = Resources(cpu_quota=10_000, memory_limit_in_bytes=16 * MiB)

    update(work, pod.id, Resources(cpu_quota=150_000, memory_limit_in_bytes=256 * MiB), overhead)

    assert cpu_quota(pod) == "160000"
    assert memory_limit(pod) == 272 * MiB
    linux = work.pod_info(pod.id)["config"]["linux"]
    assert linux["resources"] == {"cpu_quota": "150000", "memory_limit_in_bytes": str(256 * MiB)}
    assert linux["overhead"]["memory_limit_in_bytes"] == str(16 * MiB)
    assert work.status(container_id).state == api_pb2.ContainerState.CONTAINER_RUNNING

    update(work, pod.id, Resources())  # the whole picture: no limits any more

    assert cpu_quota(pod) in ("-1", "max") and memory_limit(pod) == -1
    assert work.pod_info(pod.id)["config"]["linux"].get("resources", {}) == {}


def test_a_pod_without_a_container_yet_gets_its_cgroup(work: Workloads) -> None:
    pod = work.pod("empty")

    update(work, pod.id, Resources(memory_limit_in_bytes=32 * MiB))

    assert memory_limit(pod) == 32 * MiB


def test_unknown_pods_are_not_found(work: Workloads) -> None:
    assert update_error(work, "0" * 64, Resources(cpu_shares=2)).code() == grpc.StatusCode.NOT_FOUND


def test_bad_figures_are_refused_and_change_nothing(work: Workloads, busybox: str) -> None:
    pod, _ = limited_pod(work, busybox, "refused", Resources(cpu_quota=50_000, memory_limit_in_bytes=64 * MiB))

    for bad in (
        Resources(cpu_quota=10),
        Resources(memory_limit_in_bytes=MiB, memory_swap_limit_in_bytes=1),
        Resources(cpuset_cpus="x"),
    ):
        error = update_error(work, pod.id, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("resources.")

    assert (cpu_quota(pod), memory_limit(pod)) == ("50000", 64 * MiB)
    assert work.pod_info(pod.id)["config"]["linux"]["resources"]["cpu_quota"] == "50000"


@pytest.mark.skipif(host_layout().unified is not None, reason="cgroup v2 lets a parent's quota go below a child's")
def test_a_quota_the_kernel_refuses_changes_nothing(work: Workloads, busybox: str) -> None:
    """v1 refuses a parent CFS quota below a child's: the shares written before it are put back."""
    pod = work.pod("nested")
    limited = container_config("app", busybox, *SLEEP_FOREVER)
    limited.linux.resources.cpu_quota = 80_000
    work.run(pod, limited)
    update(work, pod.id, Resources(cpu_quota=100_000, memory_limit_in_bytes=64 * MiB))

    error = update_error(work, pod.id, Resources(cpu_shares=512, cpu_quota=20_000, memory_limit_in_bytes=32 * MiB))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("resources.cpu_quota (with the overhead)")
    assert (pod_file(pod, "cpu", "cpu.shares"), cpu_quota(pod), memory_limit(pod)) == ("1024", "100000", 64 * MiB)
    assert work.pod_info(pod.id)["config"]["linux"]["resources"]["cpu_quota"] == "100000"


def test_a_stopped_pod_is_recorded_only(work: Workloads, busybox: str) -> None:
    pod, _ = limited_pod(work, busybox, "stopped", Resources(memory_limit_in_bytes=64 * MiB))
    work.stop_pod(pod.id)

    update(work, pod.id, Resources(memory_limit_in_bytes=128 * MiB))

    assert work.pod_info(pod.id)["config"]["linux"]["resources"]["memory_limit_in_bytes"] == str(128 * MiB)
    assert memory_limit(pod) == 64 * MiB


# ---- pressure and swap in the stats ----


def host_has_cgroup2_pressure() -> bool:
    layout = host_layout()
    cgroup2 = layout.unified or layout.hybrid_unified
    return cgroup2 is not None and (cgroup2 / "cpu.pressure").is_file()


def host_accounts_swap() -> bool:
    layout = host_layout()
    if layout.unified is not None:
        return any(layout.unified.glob("*/memory.swap.current"))
    return "total_swap" in (layout.v1["memory"] / "memory.stat").read_text()


def test_stats_carry_pressure_and_swap_where_the_host_keeps_them(work: Workloads, busybox: str) -> None:
    pod = work.pod("pressure")
    container_id = work.run(pod, container_config("app", busybox, *SLEEP_FOREVER))

    stats = work.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=container_id)).stats
    listed = work.runtime.ListContainerStats(
        api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(id=container_id))
    ).stats
    pod_stats = work.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod.id)).stats.linux

    has_pressure = host_has_cgroup2_pressure()
    for usage in (stats, listed[0], pod_stats):
        assert usage.cpu.HasField("psi") == has_pressure
        assert usage.memory.HasField("psi") == has_pressure
        assert usage.HasField("io") == has_pressure
    if has_pressure:
        assert stats.cpu.psi.HasField("Some") and stats.io.timestamp > 0
    assert stats.HasField("swap") == host_accounts_swap() == stats.swap.HasField("swap_usage_bytes")

"""CRI metrics through gRPC on a real node: a pod whose containers burn CPU, write to their
writable layer and serve HTTP to the host, and the series that show it."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from pycri.api import api_pb2
from pycri.stats.metrics import metric_descriptors
from tests.integration.test_cni import wait_for_http
from tests.integration.test_container_stats import HTTP_PORT, PAGE, pod_ip, web_server
from tests.support.pods import RPC_TIMEOUT, SLEEP_FOREVER, Pod, Workloads, container_config, shell, wait_until

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LABEL_KEYS = {descriptor.name: list(descriptor.label_keys) for descriptor in metric_descriptors()}
BUSY_LOOP = shell("while :; do :; done")
# Half a CPU: the busy container is throttled, so its CFS counters move.
HALF_A_CPU = api_pb2.LinuxContainerResources(cpu_period=100_000, cpu_quota=50_000, memory_limit_in_bytes=128 * MiB)


def all_pod_metrics(work: Workloads) -> list[api_pb2.PodSandboxMetrics]:
    request = api_pb2.ListPodSandboxMetricsRequest()
    return list(work.runtime.ListPodSandboxMetrics(request, timeout=RPC_TIMEOUT).pod_metrics)


def pod_metrics(work: Workloads, pod: Pod) -> api_pb2.PodSandboxMetrics:
    found = [metrics for metrics in all_pod_metrics(work) if metrics.pod_sandbox_id == pod.id]
    assert len(found) == 1, f"pod {pod.id} listed {len(found)} times"
    return found[0]


def container_series(metrics: api_pb2.PodSandboxMetrics, container_id: str) -> list[api_pb2.Metric]:
    found = [entry for entry in metrics.container_metrics if entry.container_id == container_id]
    assert len(found) == 1, f"container {container_id} listed {len(found)} times"
    return list(found[0].metrics)


def labels(metric: api_pb2.Metric) -> dict[str, str]:
    keys = LABEL_KEYS[metric.name]
    assert len(keys) == len(metric.label_values), metric
    return dict(zip(keys, metric.label_values, strict=True))


def value(series: Iterable[api_pb2.Metric], name: str, **wanted: str) -> int:
    """The one sample of `name` whose labels include `wanted`."""
    matching = [m for m in series if m.name == name and wanted.items() <= labels(m).items()]
    assert len(matching) == 1, f"{len(matching)} samples of {name} with {wanted}"
    return matching[0].value.value


def test_descriptors_over_grpc_are_the_ones_the_metrics_use(work: Workloads) -> None:
    reply = work.runtime.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest(), timeout=RPC_TIMEOUT)
    assert list(reply.descriptors) == metric_descriptors()


def test_a_busy_pod_shows_cpu_memory_disk_processes_and_traffic(work: Workloads, busybox: str) -> None:
    pod = work.pod("metered", labels={"app": "metered"})
    busy = work.run(pod, container_config("busy", busybox, *BUSY_LOOP, linux={"resources": HALF_A_CPU}))
    web = web_server(work, pod, busybox)
    address = pod_ip(work, pod)
    for _ in range(3):
        assert wait_for_http(address, HTTP_PORT) == PAGE
    work.output(busy, "dd", "if=/dev/zero", "of=/written", "bs=1M", "count=4")

    def busy_for_a_second() -> api_pb2.PodSandboxMetrics | None:
        metrics = pod_metrics(work, pod)
        return metrics if value(container_series(metrics, busy), "container_cpu_usage_seconds_total") >= 1 else None

    metrics = wait_until(busy_for_a_second, "a CPU second used by the busy container")
    assert {entry.container_id for entry in metrics.container_metrics} == {busy, web}

    busy_series = container_series(metrics, busy)
    for metric in busy_series:
        assert labels(metric).items() >= {"container": "busy", "id": busy, "pod": "metered", "image": busybox}.items()
        assert labels(metric)["namespace"] == pod.config.metadata.namespace
        assert metric.timestamp > 0
    assert value(busy_series, "container_cpu_usage_seconds_total", cpu="total") >= 1
    assert value(busy_series, "container_cpu_cfs_periods_total") > 0
    assert value(busy_series, "container_cpu_cfs_throttled_periods_total") > 0
    assert value(busy_series, "container_memory_working_set_bytes") > 0
    assert value(busy_series, "container_memory_usage_bytes") >= value(
        busy_series, "container_memory_working_set_bytes"
    )
    assert value(busy_series, "container_spec_cpu_quota") == 50_000
    assert value(busy_series, "container_spec_cpu_period") == 100_000
    assert value(busy_series, "container_spec_memory_limit_bytes") == 128 * MiB
    assert value(busy_series, "container_processes") == 1
    assert value(busy_series, "container_threads") >= 1
    assert value(busy_series, "container_file_descriptors") >= 3
    assert value(busy_series, "container_fs_usage_bytes") >= 4 * MiB
    assert value(busy_series, "container_fs_limit_bytes") > value(busy_series, "container_fs_usage_bytes")
    assert value(busy_series, "container_fs_inodes_total") > value(busy_series, "container_fs_inodes_free") > 0
    started = value(busy_series, "container_start_time_seconds")
    assert 0 < started <= value(busy_series, "container_last_seen")

    web_series = container_series(metrics, web)
    assert value(web_series, "container_sockets") >= 1  # httpd's listening socket
    assert "container_spec_cpu_quota" not in {metric.name for metric in web_series}

    pod_series = list(pod_metrics(work, pod).metrics)  # read after the busy container's second: no earlier
    for metric in pod_series:
        assert labels(metric).items() >= {"container": "", "id": pod.id, "pod": "metered", "image": ""}.items()
    assert value(pod_series, "container_cpu_usage_seconds_total") >= 1
    assert value(pod_series, "container_memory_working_set_bytes") > 0
    # The two containers and their two conmons: conmon_cgroup = "pod" charges the monitors to the pod, as CRI-O does.
    assert value(pod_series, "container_processes") == 4
    assert value(pod_series, "container_network_receive_bytes_total", interface="eth0") > 0
    assert value(pod_series, "container_network_receive_packets_total", interface="eth0") > 0
    assert value(pod_series, "container_network_transmit_bytes_total", interface="eth0") > 3 * len(PAGE)
    assert "lo" not in {labels(m).get("interface") for m in pod_series}


def test_network_counters_grow_with_traffic(work: Workloads, busybox: str) -> None:
    pod = work.pod("counted")
    web_server(work, pod, busybox)
    address = pod_ip(work, pod)
    wait_for_http(address, HTTP_PORT)
    before = value(pod_metrics(work, pod).metrics, "container_network_transmit_bytes_total", interface="eth0")
    for _ in range(3):
        wait_for_http(address, HTTP_PORT)
    after = value(pod_metrics(work, pod).metrics, "container_network_transmit_bytes_total", interface="eth0")
    assert after >= before + 3 * len(PAGE)


def test_only_ready_pods_and_running_containers_are_listed(work: Workloads, busybox: str) -> None:
    running, stopped = work.pod("running"), work.pod("stopped")
    sleeper = work.run(running, container_config("sleeper", busybox, *SLEEP_FOREVER))
    finished = work.run(running, container_config("finished", busybox, "true"))
    work.wait_for_exit(finished)
    work.stop_pod(stopped.id)

    listed = {metrics.pod_sandbox_id: metrics for metrics in all_pod_metrics(work)}
    assert running.id in listed and stopped.id not in listed
    assert [entry.container_id for entry in listed[running.id].container_metrics] == [sleeper]


def test_stream_sends_what_the_list_has(work: Workloads, busybox: str) -> None:
    first, second = work.pod("streamed-1"), work.pod("streamed-2")
    work.run(first, container_config("sleeper", busybox, *SLEEP_FOREVER))
    listed = {metrics.pod_sandbox_id for metrics in all_pod_metrics(work)}
    streamed = work.runtime.StreamPodSandboxMetrics(api_pb2.StreamPodSandboxMetricsRequest(), timeout=RPC_TIMEOUT)
    streamed_ids = [metrics.pod_sandbox_id for reply in streamed for metrics in reply.pod_sandbox_metrics]
    assert {first.id, second.id} <= set(streamed_ids) == listed
    assert len(streamed_ids) == len(set(streamed_ids))

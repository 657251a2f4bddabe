"""CRI metrics: descriptors against what is emitted, and readings turned into series."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.cgroups.details import (
    CgroupDetails,
    CpuDetails,
    DeviceIo,
    HugetlbUsage,
    Limits,
    MemoryDetails,
    ProcessCounts,
)
from pycri.cgroups.usage import CgroupStats, Pressure, PsiData
from pycri.stats.metrics import (
    BASE_LABEL_KEYS,
    METRICS,
    CgroupReading,
    FilesystemUsage,
    LinkCounters,
    MetricLabels,
    MetricSink,
    add_cgroup_metrics,
    add_filesystem_metrics,
    add_lifetime_metrics,
    add_network_metrics,
    add_ulimit_metrics,
    metric_descriptors,
)

pytestmark = pytest.mark.unit

# The series kubelet shows on /metrics/cadvisor that critest asks a runtime for.
CADVISOR_NAMES = {
    "container_blkio_device_usage_total", "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total", "container_cpu_usage_seconds_total", "container_cpu_user_seconds_total",
    "container_file_descriptors", "container_fs_inodes_free", "container_fs_inodes_total", "container_fs_limit_bytes",
    "container_fs_reads_bytes_total", "container_fs_reads_total", "container_fs_usage_bytes",
    "container_fs_writes_bytes_total", "container_fs_writes_total", "container_hugetlb_max_usage_bytes",
    "container_hugetlb_usage_bytes", "container_last_seen", "container_memory_cache", "container_memory_failcnt",
    "container_memory_failures_total", "container_memory_kernel_usage", "container_memory_mapped_file",
    "container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap",
    "container_memory_usage_bytes", "container_memory_working_set_bytes", "container_network_receive_bytes_total",
    "container_network_receive_errors_total", "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total", "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total", "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total", "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total", "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total", "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total", "container_pressure_memory_waiting_seconds_total",
    "container_processes", "container_sockets", "container_spec_cpu_period", "container_spec_cpu_quota",
    "container_spec_cpu_shares", "container_spec_memory_limit_bytes", "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes", "container_start_time_seconds", "container_threads",
    "container_threads_max", "container_ulimits_soft",
}  # fmt: skip

LABELS = MetricLabels("web", "c0ffee", "busybox:latest", "web_pod_ns_uid_0", "ns", "pod")
NOW_NS = 1_700_000_000_123_456_789
GiB = 1 << 30


def psi(some_us: int, full_us: int) -> Pressure:
    return Pressure(some=PsiData(0.0, 0.0, 0.0, some_us), full=PsiData(0.0, 0.0, 0.0, full_us))


def full_reading(**stats_fields: int) -> CgroupReading:
    """A reading with every optional part present: quota, limits, block I/O, hugetlb, pressure."""
    stats = CgroupStats(
        timestamp_ns=NOW_NS,
        cpu_usage_ns=2_500_000_000,
        memory_usage=8 << 20,
        memory_working_set=6 << 20,
        memory_rss=4 << 20,
        memory_limit=64 << 20,
        page_faults=900,
        major_page_faults=9,
        pids=3,
        pressure={"cpu": psi(2_000_000, 1_000_000), "memory": psi(0, 0), "io": psi(5, 0)},
    )
    stats = CgroupStats(**{**stats.__dict__, **stats_fields})
    details = CgroupDetails(
        cpu=CpuDetails(
            user_ns=1_900_000_000, system_ns=600_000_000, periods=40, throttled_periods=7, throttled_ns=3 * 10**9
        ),
        memory=MemoryDetails(
            cache=2 << 20,
            kernel=1 << 20,
            mapped_file=1 << 19,
            swap=0,
            failcnt=2,
            max_usage=9 << 20,
            oom_kills=1,
            local_page_faults=100,
            local_major_page_faults=1,
        ),
        limits=Limits(
            cpu_period_us=100_000,
            cpu_quota_us=20_000,
            cpu_shares=1024,
            memory=64 << 20,
            memory_reservation=32 << 20,
            memory_swap=64 << 20,
            pids=1024,
        ),
        io=(DeviceIo(254, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),),
        hugetlb=(HugetlbUsage("2MB", usage=2 << 20, max_usage=4 << 20),),
        pids=(10, 11),
    )
    return CgroupReading(stats, details, ProcessCounts(file_descriptors=12, sockets=2), {(254, 0): "/dev/vda"})


LINK = LinkCounters("eth0", 1000, 10, 1, 0, 2000, 20, 0, 2)
FILESYSTEM = FilesystemUsage("/dev/vda", used_bytes=4096, capacity_bytes=100 * GiB, inodes_total=1000, inodes_free=900)


def everything() -> list[api_pb2.Metric]:
    sink = MetricSink(LABELS, NOW_NS)
    add_cgroup_metrics(sink, full_reading())
    add_network_metrics(sink, [LINK])
    add_filesystem_metrics(sink, FILESYSTEM)
    add_ulimit_metrics(sink, 1048576)
    add_lifetime_metrics(sink, started_at_ns=NOW_NS - 5 * 10**9, now_ns=NOW_NS)
    return sink.metrics


def by_name(metrics: list[api_pb2.Metric]) -> dict[str, list[api_pb2.Metric]]:
    found: dict[str, list[api_pb2.Metric]] = {}
    for metric in metrics:
        found.setdefault(metric.name, []).append(metric)
    return found


def value(metrics: list[api_pb2.Metric], name: str, *extra_labels: str) -> int:
    matching = [m for m in by_name(metrics)[name] if list(m.label_values[len(BASE_LABEL_KEYS) :]) == list(extra_labels)]
    assert len(matching) == 1, (name, extra_labels, matching)
    return matching[0].value.value


# ---- descriptors ----


def test_descriptors_have_unique_names_help_and_the_base_label_keys_first() -> None:
    descriptors = metric_descriptors()
    names = [d.name for d in descriptors]
    assert len(names) == len(set(names))
    for descriptor in descriptors:
        assert descriptor.help, descriptor.name
        assert tuple(descriptor.label_keys[: len(BASE_LABEL_KEYS)]) == BASE_LABEL_KEYS
        assert len(set(descriptor.label_keys)) == len(descriptor.label_keys)


def test_descriptors_cover_the_cadvisor_series() -> None:
    assert {d.name for d in metric_descriptors()} == CADVISOR_NAMES


def test_counters_are_the_totals() -> None:
    gauges_named_total = {"container_fs_inodes_total"}
    counters_named_otherwise = {"container_memory_failcnt"}
    for spec in METRICS:
        counter = spec.name.endswith("_total") and spec.name not in gauges_named_total
        assert (spec.kind == api_pb2.COUNTER) == (counter or spec.name in counters_named_otherwise), spec.name


# ---- emitted series against descriptors ----


def test_every_emitted_metric_matches_its_descriptor() -> None:
    descriptors = {d.name: d for d in metric_descriptors()}
    for metric in everything():
        descriptor = descriptors[metric.name]
        assert len(metric.label_values) == len(descriptor.label_keys), metric.name
        assert list(metric.label_values[: len(BASE_LABEL_KEYS)]) == LABELS.values()
        assert metric.timestamp == NOW_NS
        assert metric.metric_type == next(s.kind for s in METRICS if s.name == metric.name)


def test_a_full_reading_emits_every_descriptor() -> None:
    assert set(by_name(everything())) == {d.name for d in metric_descriptors()}


def test_the_sink_refuses_unknown_names_and_misaligned_labels() -> None:
    sink = MetricSink(LABELS, NOW_NS)
    with pytest.raises(KeyError):
        sink.add("container_made_up_total", 1)
    with pytest.raises(ValueError, match="interface"):
        sink.add("container_network_receive_bytes_total", 1)
    with pytest.raises(ValueError):
        sink.add("container_processes", 1, "extra")


# ---- values ----


def test_seconds_are_whole_seconds() -> None:
    metrics = everything()
    assert value(metrics, "container_cpu_usage_seconds_total", "total") == 2
    assert value(metrics, "container_cpu_user_seconds_total") == 1
    assert value(metrics, "container_cpu_system_seconds_total") == 0
    assert value(metrics, "container_cpu_cfs_throttled_seconds_total") == 3
    assert value(metrics, "container_pressure_cpu_waiting_seconds_total") == 2
    assert value(metrics, "container_pressure_cpu_stalled_seconds_total") == 1
    assert value(metrics, "container_start_time_seconds") == NOW_NS // 10**9 - 5
    assert value(metrics, "container_last_seen") == NOW_NS // 10**9


def test_memory_processes_and_limits() -> None:
    metrics = everything()
    assert value(metrics, "container_memory_working_set_bytes") == 6 << 20
    assert value(metrics, "container_memory_failures_total", "pgfault", "container") == 100
    assert value(metrics, "container_memory_failures_total", "pgfault", "hierarchy") == 900
    assert value(metrics, "container_memory_failures_total", "pgmajfault", "hierarchy") == 9
    assert value(metrics, "container_oom_events_total") == 1
    assert value(metrics, "container_processes") == 2
    assert value(metrics, "container_threads") == 3
    assert value(metrics, "container_threads_max") == 1024
    assert value(metrics, "container_file_descriptors") == 12
    assert value(metrics, "container_spec_cpu_quota") == 20_000
    assert value(metrics, "container_spec_memory_limit_bytes") == 64 << 20
    assert value(metrics, "container_ulimits_soft", "max_open_files") == 1048576


def test_unlimited_limits_read_zero_and_no_quota_means_no_quota_series() -> None:
    reading = full_reading()
    unlimited = Limits(100_000, None, 2, None, None, None, None)
    details = CgroupDetails(reading.details.cpu, reading.details.memory, unlimited)
    sink = MetricSink(LABELS, NOW_NS)
    stats = dataclasses.replace(reading.stats, pressure={})
    add_cgroup_metrics(sink, CgroupReading(stats, details, reading.processes, {}))
    add_ulimit_metrics(sink, None)
    found = by_name(sink.metrics)
    assert "container_spec_cpu_quota" not in found and "container_ulimits_soft" not in found
    for name in (
        "container_threads_max",
        "container_spec_memory_limit_bytes",
        "container_spec_memory_swap_limit_bytes",
    ):
        assert value(sink.metrics, name) == 0
    assert not {name for name in found if "blkio" in name or "hugetlb" in name or "pressure" in name}


def test_block_io_is_labelled_by_device_name_and_numbers() -> None:
    metrics = everything()
    assert value(metrics, "container_fs_reads_bytes_total", "/dev/vda") == 4096
    assert value(metrics, "container_fs_writes_total", "/dev/vda") == 2
    assert value(metrics, "container_blkio_device_usage_total", "/dev/vda", "254", "0", "Write") == 8192


def test_a_device_without_a_name_is_labelled_major_minor() -> None:
    reading = full_reading()
    sink = MetricSink(LABELS, NOW_NS)
    add_cgroup_metrics(sink, CgroupReading(reading.stats, reading.details, reading.processes, {}))
    assert value(sink.metrics, "container_fs_reads_total", "254:0") == 1


def test_network_series_per_interface() -> None:
    sink = MetricSink(LABELS, NOW_NS)
    add_network_metrics(sink, [LINK, LinkCounters("net1", 1, 2, 3, 4, 5, 6, 7, 8)])
    assert value(sink.metrics, "container_network_receive_bytes_total", "eth0") == 1000
    assert value(sink.metrics, "container_network_transmit_errors_total", "eth0") == 2
    assert value(sink.metrics, "container_network_receive_packets_dropped_total", "net1") == 3
    assert value(sink.metrics, "container_network_transmit_packets_total", "net1") == 6
    assert len(sink.metrics) == 16


@given(st.integers(min_value=-(2**70), max_value=2**63))
def test_values_fit_the_wire_type(raw: int) -> None:
    sink = MetricSink(LABELS, NOW_NS)
    sink.add("container_memory_usage_bytes", raw)
    assert sink.metrics[0].value.value == max(raw, 0)

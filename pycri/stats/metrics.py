"""CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics): cAdvisor's container_* series for
each ready pod (its cgroup and its network namespace) and each running container (its cgroup and
its writable layer).

The names, kinds and label keys are those kubelet's /metrics/cadvisor shows, so dashboards keep
working when kubelet takes them from the runtime: every series carries `container`, `id`, `image`,
`name`, `namespace` and `pod`, a pod's own series with an empty `container`. Values travel as
integers (UInt64Value), so "_seconds" series count whole seconds, as in the other CRI runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycri.api import api_pb2
from pycri.cgroups.details import CgroupDetails, ProcessCounts
from pycri.cgroups.usage import CgroupStats

COUNTER, GAUGE = api_pb2.COUNTER, api_pb2.GAUGE
BASE_LABEL_KEYS = ("container", "id", "image", "name", "namespace", "pod")
NANOS_PER_SECOND = 1_000_000_000
MICROS_PER_SECOND = 1_000_000


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: api_pb2.MetricType
    help: str
    extra_label_keys: tuple[str, ...] = ()

    def descriptor(self) -> api_pb2.MetricDescriptor:
        keys = [*BASE_LABEL_KEYS, *self.extra_label_keys]
        return api_pb2.MetricDescriptor(name=self.name, help=self.help, label_keys=keys)


def _network(direction: str, verb: str) -> tuple[MetricSpec, ...]:
    return (
        MetricSpec(f"container_network_{direction}_bytes_total", COUNTER, f"Bytes {verb}.", ("interface",)),
        MetricSpec(f"container_network_{direction}_packets_total", COUNTER, f"Packets {verb}.", ("interface",)),
        MetricSpec(
            f"container_network_{direction}_packets_dropped_total",
            COUNTER,
            f"Packets dropped instead of {verb}.",
            ("interface",),
        ),
        MetricSpec(f"container_network_{direction}_errors_total", COUNTER, f"Errors while {verb}.", ("interface",)),
    )


def _pressure(resource: str) -> tuple[MetricSpec, ...]:
    return (
        MetricSpec(
            f"container_pressure_{resource}_waiting_seconds_total",
            COUNTER,
            f"Seconds in which some tasks of the cgroup waited for {resource}.",
        ),
        MetricSpec(
            f"container_pressure_{resource}_stalled_seconds_total",
            COUNTER,
            f"Seconds in which every task of the cgroup was stalled on {resource}.",
        ),
    )


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("container_cpu_usage_seconds_total", COUNTER, "CPU time used, in seconds.", ("cpu",)),
    MetricSpec("container_cpu_user_seconds_total", COUNTER, "CPU time used in user mode, in seconds."),
    MetricSpec("container_cpu_system_seconds_total", COUNTER, "CPU time used in kernel mode, in seconds."),
    MetricSpec("container_cpu_cfs_periods_total", COUNTER, "CFS enforcement periods that have elapsed."),
    MetricSpec("container_cpu_cfs_throttled_periods_total", COUNTER, "CFS periods in which the cgroup was throttled."),
    MetricSpec("container_cpu_cfs_throttled_seconds_total", COUNTER, "Time the cgroup spent throttled, in seconds."),
    MetricSpec("container_memory_usage_bytes", GAUGE, "Memory charged to the cgroup, page cache included."),
    MetricSpec("container_memory_working_set_bytes", GAUGE, "Memory usage minus inactive file pages."),
    MetricSpec("container_memory_rss", GAUGE, "Anonymous memory (and swap cache) in bytes."),
    MetricSpec("container_memory_cache", GAUGE, "Page cache in bytes."),
    MetricSpec("container_memory_kernel_usage", GAUGE, "Kernel memory charged to the cgroup, in bytes."),
    MetricSpec("container_memory_mapped_file", GAUGE, "Memory-mapped file pages in bytes."),
    MetricSpec("container_memory_swap", GAUGE, "Swap used, in bytes."),
    MetricSpec("container_memory_failcnt", COUNTER, "Times memory usage reached the limit."),
    MetricSpec("container_memory_max_usage_bytes", GAUGE, "Highest memory usage recorded, in bytes."),
    MetricSpec(
        "container_memory_failures_total",
        COUNTER,
        "Page faults, by fault type and by scope (the cgroup's own tasks, or its whole subtree).",
        ("failure_type", "scope"),
    ),
    MetricSpec("container_oom_events_total", COUNTER, "Processes of the cgroup the OOM killer killed."),
    MetricSpec("container_processes", GAUGE, "Processes in the cgroup."),
    MetricSpec("container_threads", GAUGE, "Threads in the cgroup."),
    MetricSpec("container_threads_max", GAUGE, "Most threads the cgroup may hold; 0 means no limit."),
    MetricSpec("container_file_descriptors", GAUGE, "File descriptors the cgroup's processes hold open."),
    MetricSpec("container_sockets", GAUGE, "Sockets the cgroup's processes hold open."),
    MetricSpec("container_ulimits_soft", GAUGE, "Soft resource limits of the container's first process.", ("ulimit",)),
    *_network("receive", "received"),
    *_network("transmit", "transmitted"),
    MetricSpec("container_fs_usage_bytes", GAUGE, "Bytes the writable layer takes on disk.", ("device",)),
    MetricSpec("container_fs_limit_bytes", GAUGE, "Size of the filesystem holding the layer.", ("device",)),
    MetricSpec("container_fs_inodes_total", GAUGE, "Inodes of the filesystem holding the layer.", ("device",)),
    MetricSpec("container_fs_inodes_free", GAUGE, "Free inodes of that filesystem.", ("device",)),
    MetricSpec("container_fs_reads_bytes_total", COUNTER, "Bytes read from the block device.", ("device",)),
    MetricSpec("container_fs_reads_total", COUNTER, "Reads completed on the block device.", ("device",)),
    MetricSpec("container_fs_writes_bytes_total", COUNTER, "Bytes written to the block device.", ("device",)),
    MetricSpec("container_fs_writes_total", COUNTER, "Writes completed on the block device.", ("device",)),
    MetricSpec(
        "container_blkio_device_usage_total",
        COUNTER,
        "Bytes moved to or from a block device, by operation.",
        ("device", "major", "minor", "operation"),
    ),
    MetricSpec("container_hugetlb_usage_bytes", GAUGE, "Huge pages in use, in bytes.", ("pagesize",)),
    MetricSpec("container_hugetlb_max_usage_bytes", GAUGE, "Most huge page bytes used at once.", ("pagesize",)),
    *_pressure("cpu"),
    *_pressure("memory"),
    *_pressure("io"),
    MetricSpec("container_spec_cpu_period", GAUGE, "CFS period, in microseconds."),
    MetricSpec("container_spec_cpu_quota", GAUGE, "CFS quota per period, in microseconds."),
    MetricSpec("container_spec_cpu_shares", GAUGE, "CPU shares (relative weight)."),
    MetricSpec("container_spec_memory_limit_bytes", GAUGE, "Memory limit in bytes; 0 means no limit."),
    MetricSpec(
        "container_spec_memory_reservation_limit_bytes", GAUGE, "Memory reservation (soft limit); 0 means none."
    ),
    MetricSpec("container_spec_memory_swap_limit_bytes", GAUGE, "Memory plus swap limit in bytes; 0 means no limit."),
    MetricSpec("container_start_time_seconds", GAUGE, "When it started, in seconds since the epoch."),
    MetricSpec("container_last_seen", GAUGE, "When the runtime last saw it, in seconds since the epoch."),
)
SPECS = {spec.name: spec for spec in METRICS}


def metric_descriptors() -> list[api_pb2.MetricDescriptor]:
    return [spec.descriptor() for spec in METRICS]


@dataclass(frozen=True)
class MetricLabels:
    """The labels every series of one pod or container carries (BASE_LABEL_KEYS, in order)."""

    container: str
    id: str
    image: str
    name: str
    namespace: str
    pod: str

    def values(self) -> list[str]:
        return [self.container, self.id, self.image, self.name, self.namespace, self.pod]


@dataclass(frozen=True)
class CgroupReading:
    stats: CgroupStats
    details: CgroupDetails
    processes: ProcessCounts
    device_names: dict[tuple[int, int], str]  # (major, minor) -> "/dev/vda" for the devices in details.io


@dataclass(frozen=True)
class LinkCounters:
    interface: str
    rx_bytes: int
    rx_packets: int
    rx_dropped: int
    rx_errors: int
    tx_bytes: int
    tx_packets: int
    tx_dropped: int
    tx_errors: int


@dataclass(frozen=True)
class FilesystemUsage:
    device: str
    used_bytes: int
    capacity_bytes: int
    inodes_total: int
    inodes_free: int


class MetricSink:
    """Metrics of one pod or container; `add` refuses a name without a descriptor, or label
    values that do not line up with the descriptor's keys."""

    def __init__(self, labels: MetricLabels, timestamp_ns: int) -> None:
        self._labels = labels.values()
        self._timestamp_ns = timestamp_ns
        self.metrics: list[api_pb2.Metric] = []

    def add(self, name: str, value: int, *extra_labels: str) -> None:
        spec = SPECS[name]
        if len(extra_labels) != len(spec.extra_label_keys):
            raise ValueError(f"{name} takes labels {spec.extra_label_keys}, got {extra_labels}")
        metric = api_pb2.Metric(
            name=name,
            timestamp=self._timestamp_ns,
            metric_type=spec.kind,
            label_values=[*self._labels, *extra_labels],
        )
        metric.value.value = max(value, 0)
        self.metrics.append(metric)


def add_cgroup_metrics(sink: MetricSink, reading: CgroupReading) -> None:
    """CPU, memory, processes, limits, block I/O, hugetlb and pressure of one cgroup."""
    stats, details = reading.stats, reading.details
    cpu, memory, limits = details.cpu, details.memory, details.limits
    sink.add("container_cpu_usage_seconds_total", stats.cpu_usage_ns // NANOS_PER_SECOND, "total")
    sink.add("container_cpu_user_seconds_total", cpu.user_ns // NANOS_PER_SECOND)
    sink.add("container_cpu_system_seconds_total", cpu.system_ns // NANOS_PER_SECOND)
    sink.add("container_cpu_cfs_periods_total", cpu.periods)
    sink.add("container_cpu_cfs_throttled_periods_total", cpu.throttled_periods)
    sink.add("container_cpu_cfs_throttled_seconds_total", cpu.throttled_ns // NANOS_PER_SECOND)
    sink.add("container_memory_usage_bytes", stats.memory_usage)
    sink.add("container_memory_working_set_bytes", stats.memory_working_set)
    sink.add("container_memory_rss", stats.memory_rss)
    sink.add("container_memory_cache", memory.cache)
    sink.add("container_memory_kernel_usage", memory.kernel)
    sink.add("container_memory_mapped_file", memory.mapped_file)
    sink.add("container_memory_swap", memory.swap)
    sink.add("container_memory_failcnt", memory.failcnt)
    sink.add("container_memory_max_usage_bytes", memory.max_usage)
    faults = (
        ("pgfault", "container", memory.local_page_faults),
        ("pgfault", "hierarchy", stats.page_faults),
        ("pgmajfault", "container", memory.local_major_page_faults),
        ("pgmajfault", "hierarchy", stats.major_page_faults),
    )
    for failure_type, scope, count in faults:
        sink.add("container_memory_failures_total", count, failure_type, scope)
    sink.add("container_oom_events_total", memory.oom_kills)
    sink.add("container_processes", len(details.pids))
    sink.add("container_threads", stats.pids)
    sink.add("container_threads_max", limits.pids or 0)
    sink.add("container_file_descriptors", reading.processes.file_descriptors)
    sink.add("container_sockets", reading.processes.sockets)
    sink.add("container_spec_cpu_period", limits.cpu_period_us)
    if limits.cpu_quota_us is not None:
        sink.add("container_spec_cpu_quota", limits.cpu_quota_us)
    sink.add("container_spec_cpu_shares", limits.cpu_shares)
    sink.add("container_spec_memory_limit_bytes", limits.memory or 0)
    sink.add("container_spec_memory_reservation_limit_bytes", limits.memory_reservation or 0)
    sink.add("container_spec_memory_swap_limit_bytes", limits.memory_swap or 0)
    for io in details.io:
        device = reading.device_names.get((io.major, io.minor), f"{io.major}:{io.minor}")
        sink.add("container_fs_reads_bytes_total", io.read_bytes, device)
        sink.add("container_fs_reads_total", io.reads, device)
        sink.add("container_fs_writes_bytes_total", io.write_bytes, device)
        sink.add("container_fs_writes_total", io.writes, device)
        for operation, moved in (("Read", io.read_bytes), ("Write", io.write_bytes)):
            sink.add("container_blkio_device_usage_total", moved, device, str(io.major), str(io.minor), operation)
    for pages in details.hugetlb:
        sink.add("container_hugetlb_usage_bytes", pages.usage, pages.page_size)
        if pages.max_usage is not None:
            sink.add("container_hugetlb_max_usage_bytes", pages.max_usage, pages.page_size)
    for resource, pressure in stats.pressure.items():
        stalled_us = pressure.full.total_us if pressure.full is not None else 0
        sink.add(f"container_pressure_{resource}_waiting_seconds_total", pressure.some.total_us // MICROS_PER_SECOND)
        sink.add(f"container_pressure_{resource}_stalled_seconds_total", stalled_us // MICROS_PER_SECOND)


def add_network_metrics(sink: MetricSink, links: list[LinkCounters]) -> None:
    for link in links:
        for direction, counts in (
            ("receive", (link.rx_bytes, link.rx_packets, link.rx_dropped, link.rx_errors)),
            ("transmit", (link.tx_bytes, link.tx_packets, link.tx_dropped, link.tx_errors)),
        ):
            for kind, count in zip(("bytes", "packets", "packets_dropped", "errors"), counts, strict=True):
                sink.add(f"container_network_{direction}_{kind}_total", count, link.interface)


def add_filesystem_metrics(sink: MetricSink, usage: FilesystemUsage) -> None:
    sink.add("container_fs_usage_bytes", usage.used_bytes, usage.device)
    sink.add("container_fs_limit_bytes", usage.capacity_bytes, usage.device)
    sink.add("container_fs_inodes_total", usage.inodes_total, usage.device)
    sink.add("container_fs_inodes_free", usage.inodes_free, usage.device)


def add_ulimit_metrics(sink: MetricSink, open_files_soft_limit: int | None) -> None:
    """The container's first process's soft limits (none when unlimited)."""
    if open_files_soft_limit is not None:
        sink.add("container_ulimits_soft", open_files_soft_limit, "max_open_files")


def add_lifetime_metrics(sink: MetricSink, started_at_ns: int, now_ns: int) -> None:
    sink.add("container_start_time_seconds", started_at_ns // NANOS_PER_SECOND)
    sink.add("container_last_seen", now_ns // NANOS_PER_SECOND)

"""cgroup readings as the CRI's CpuUsage and MemoryUsage messages."""

from __future__ import annotations

from pycri.api import api_pb2
from pycri.cgroups.manager import CgroupManager
from pycri.cgroups.usage import CgroupStats


def read_stats_if_any(cgroups: CgroupManager, cgroups_path: str) -> CgroupStats | None:
    """The cgroup's stats, or None when it is gone (a pod being removed, a container that just exited)."""
    try:
        return cgroups.read_stats(cgroups_path)
    except FileNotFoundError:
        return None


def fill_cpu_memory(cpu: api_pb2.CpuUsage, memory: api_pb2.MemoryUsage, cgroup: CgroupStats) -> None:
    cpu.timestamp = cgroup.timestamp_ns
    cpu.usage_core_nano_seconds.value = cgroup.cpu_usage_ns
    memory.timestamp = cgroup.timestamp_ns
    memory.working_set_bytes.value = cgroup.memory_working_set
    memory.usage_bytes.value = cgroup.memory_usage
    memory.rss_bytes.value = cgroup.memory_rss
    memory.page_faults.value = cgroup.page_faults
    memory.major_page_faults.value = cgroup.major_page_faults
    if cgroup.memory_limit is not None:
        memory.available_bytes.value = max(cgroup.memory_limit - cgroup.memory_working_set, 0)

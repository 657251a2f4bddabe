"""cgroup readings as the CRI's CpuUsage, MemoryUsage, IoUsage and SwapUsage messages."""

from __future__ import annotations

from pycri.api import api_pb2
from pycri.cgroups.manager import CgroupManager
from pycri.cgroups.usage import CgroupStats, PsiData

UINT64_MAX = (1 << 64) - 1
NANOS_PER_MICRO = 1000


def read_stats_if_any(cgroups: CgroupManager, cgroups_path: str) -> CgroupStats | None:
    """The cgroup's stats, or None when it is gone (a pod being removed, a container that just exited)."""
    try:
        return cgroups.read_stats(cgroups_path)
    except FileNotFoundError:
        return None


def fill_cpu_memory(cpu: api_pb2.CpuUsage, memory: api_pb2.MemoryUsage, cgroup: CgroupStats) -> None:
    """Usage and, where the host keeps it, pressure."""
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
    _fill_psi(cpu.psi, cgroup, "cpu")
    _fill_psi(memory.psi, cgroup, "memory")


def fill_io(io: api_pb2.IoUsage, cgroup: CgroupStats) -> None:
    """I/O pressure; `io` stays unset where the host keeps none (cgroup v1 without a cgroup2 tree)."""
    if "io" in cgroup.pressure:
        io.timestamp = cgroup.timestamp_ns
        _fill_psi(io.psi, cgroup, "io")


def fill_swap(swap: api_pb2.SwapUsage, cgroup: CgroupStats) -> None:
    """Swap used, and what is left below the cgroup's swap limit; unset where the kernel accounts
    no swap per cgroup, and no available figure when the swap is unlimited."""
    if cgroup.swap_usage is None:
        return
    swap.timestamp = cgroup.timestamp_ns
    swap.swap_usage_bytes.value = cgroup.swap_usage
    if cgroup.swap_limit is not None:
        swap.swap_available_bytes.value = max(cgroup.swap_limit - cgroup.swap_usage, 0)


def _fill_psi(psi: api_pb2.PsiStats, cgroup: CgroupStats, resource: str) -> None:
    pressure = cgroup.pressure.get(resource)
    if pressure is None:
        return
    _fill_psi_data(psi.Some, pressure.some)
    if pressure.full is not None:
        _fill_psi_data(psi.Full, pressure.full)


def _fill_psi_data(data: api_pb2.PsiData, line: PsiData) -> None:
    data.Total = min(line.total_us * NANOS_PER_MICRO, UINT64_MAX)  # the CRI counts nanoseconds
    data.Avg10, data.Avg60, data.Avg300 = line.avg10, line.avg60, line.avg300

"""PodSandboxStats: the pod's cgroup, its network namespace's interfaces, and its containers."""

from __future__ import annotations

import asyncio
import time

from pycri.api import api_pb2
from pycri.container.operations import container_stats
from pycri.container.service import ContainerService
from pycri.network.netns import interface_stats
from pycri.state.sandboxes import SandboxRecord
from pycri.stats.cri import fill_cpu_memory, fill_io, read_stats_if_any

DEFAULT_INTERFACE = "eth0"


async def pod_sandbox_stats(record: SandboxRecord, containers: ContainerService) -> api_pb2.PodSandboxStats:
    stats = api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=record.id,
            metadata=record.metadata,
            labels=record.config.labels,
            annotations=record.config.annotations,
        )
    )
    linux = stats.linux
    cgroup = await asyncio.to_thread(read_stats_if_any, containers.ctx.cgroups, record.cgroup_parent)
    if cgroup is not None:
        fill_cpu_memory(linux.cpu, linux.memory, cgroup)
        fill_io(linux.io, cgroup)
        linux.process.timestamp = cgroup.timestamp_ns
        linux.process.process_count.value = cgroup.pids
    if record.netns_path is not None and record.ready:
        try:
            counters = await interface_stats(record.netns_path, DEFAULT_INTERFACE)
        except (LookupError, OSError):
            counters = None
        if counters is not None:
            interface = api_pb2.NetworkInterfaceUsage(name=DEFAULT_INTERFACE)
            interface.rx_bytes.value = counters.rx_bytes
            interface.rx_errors.value = counters.rx_errors
            interface.tx_bytes.value = counters.tx_bytes
            interface.tx_errors.value = counters.tx_errors
            linux.network.timestamp = time.time_ns()
            linux.network.default_interface.CopyFrom(interface)
            linux.network.interfaces.append(interface)
    for container in containers.in_sandbox(record.id):
        linux.containers.append(await asyncio.to_thread(container_stats, containers.ctx, container))
    return stats

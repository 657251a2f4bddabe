"""PodSandboxMetrics: read a pod's cgroup and network namespace, and the cgroups and writable
layers of its running containers, into the metrics pycri.stats.metrics describes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pycri.api import api_pb2
from pycri.cgroups.details import parse_open_files_soft_limit
from pycri.container.context import ContainerContext
from pycri.container.service import ContainerService
from pycri.image.snapshots import disk_usage
from pycri.network.netns import in_netns
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.sandboxes import SandboxRecord
from pycri.stats.cgroup_reading import block_device_name, read_cgroup
from pycri.stats.metrics import (
    FilesystemUsage,
    LinkCounters,
    MetricLabels,
    MetricSink,
    add_cgroup_metrics,
    add_filesystem_metrics,
    add_lifetime_metrics,
    add_network_metrics,
    add_ulimit_metrics,
)

IFF_LOOPBACK = 0x8


async def pod_sandbox_metrics(record: SandboxRecord, containers: ContainerService) -> api_pb2.PodSandboxMetrics:
    """The pod's own series (its cgroup, its interfaces) and those of each running container."""
    ctx = containers.ctx
    now_ns = time.time_ns()
    metadata = record.metadata
    labels = MetricLabels("", record.id, "", record.name, metadata.namespace, metadata.name)
    sink = MetricSink(labels, now_ns)
    reading = await asyncio.to_thread(read_cgroup, ctx.cgroups, record.cgroup_parent)
    if reading is not None:
        add_cgroup_metrics(sink, reading)
    add_lifetime_metrics(sink, record.created_at, now_ns)
    # A host-network pod's interfaces are the node's: they say nothing about the pod.
    if record.netns_path is not None:
        add_network_metrics(sink, await pod_links(record.netns_path))
    result = api_pb2.PodSandboxMetrics(pod_sandbox_id=record.id, metrics=sink.metrics)
    for container in containers.in_sandbox(record.id):
        if container.state is ContainerState.RUNNING:
            found = await asyncio.to_thread(container_metrics, ctx, container, record, now_ns)
            result.container_metrics.append(found)
    return result


def container_metrics(
    ctx: ContainerContext, record: ContainerRecord, sandbox: SandboxRecord, now_ns: int
) -> api_pb2.ContainerMetrics:
    """One running container's series (blocking: run in a thread)."""
    pod = sandbox.metadata
    labels = MetricLabels(
        record.config.metadata.name, record.id, record.image_ref, record.name, pod.namespace, pod.name
    )
    sink = MetricSink(labels, now_ns)
    reading = read_cgroup(ctx.cgroups, record.cgroups_path)
    if reading is not None:
        add_cgroup_metrics(sink, reading)
    upper = ctx.layer_dir(record.id, record.config) / "upper"
    add_filesystem_metrics(sink, writable_layer_usage(ctx.config.root_dir, upper))
    add_ulimit_metrics(sink, _open_files_soft_limit(record.pid))
    add_lifetime_metrics(sink, record.started_at, now_ns)
    return api_pb2.ContainerMetrics(container_id=record.id, metrics=sink.metrics)


async def pod_links(netns_path: Path) -> list[LinkCounters]:
    """Counters of every interface in the pod's network namespace but loopback; none when the
    namespace is gone (a pod being stopped)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        async with in_netns(netns_path) as ipr:
            links = [link async for link in await ipr.link("dump")]
    except (OSError, NetlinkError):
        return []
    found = []
    for link in links:
        counters = link.get("stats64") or link.get("stats")
        if link["flags"] & IFF_LOOPBACK or counters is None:
            continue
        found.append(
            LinkCounters(
                interface=link.get("ifname"),
                rx_bytes=counters["rx_bytes"],
                rx_packets=counters["rx_packets"],
                rx_dropped=counters["rx_dropped"],
                rx_errors=counters["rx_errors"],
                tx_bytes=counters["tx_bytes"],
                tx_packets=counters["tx_packets"],
                tx_dropped=counters["tx_dropped"],
                tx_errors=counters["tx_errors"],
            )
        )
    return found


def writable_layer_usage(root_dir: Path, upper_dir: Path) -> FilesystemUsage:
    """What a writable layer takes, and the size and inodes of the filesystem under the root (blocking)."""
    used_bytes, _ = disk_usage(upper_dir)
    filesystem = os.statvfs(root_dir)
    device = os.stat(root_dir).st_dev
    return FilesystemUsage(
        device=block_device_name(os.major(device), os.minor(device)),
        used_bytes=used_bytes,
        capacity_bytes=filesystem.f_blocks * filesystem.f_frsize,
        inodes_total=filesystem.f_files,
        inodes_free=filesystem.f_ffree,
    )


def _open_files_soft_limit(pid: int) -> int | None:
    if pid <= 0:
        return None
    try:
        return parse_open_files_soft_limit(Path(f"/proc/{pid}/limits").read_text())
    except OSError:
        return None

"""ListContainerStats: stats of the running containers the filter picks."""

import asyncio

from pycri.api import api_pb2
from pycri.container.metadata import ContainerState
from pycri.container.operations import container_stats
from pycri.daemon import Daemon


async def collect(daemon: Daemon, wanted: api_pb2.ContainerStatsFilter) -> list[api_pb2.ContainerStats]:
    if wanted.id:
        found = daemon.containers.find_quietly(wanted.id)
        candidates = [found] if found is not None else []
    else:
        candidates = list(daemon.containers.records())
    picked = []
    for record in candidates:
        daemon.containers.refresh(record)
        if record.state is not ContainerState.RUNNING:
            continue
        if wanted.pod_sandbox_id and not record.sandbox_id.startswith(wanted.pod_sandbox_id):
            continue
        if any(record.config.labels.get(k) != v for k, v in wanted.label_selector.items()):
            continue
        picked.append(record)
    return [await asyncio.to_thread(container_stats, daemon.containers, record) for record in picked]


async def handle(daemon: Daemon, request: api_pb2.ListContainerStatsRequest) -> api_pb2.ListContainerStatsResponse:
    return api_pb2.ListContainerStatsResponse(stats=await collect(daemon, request.filter))

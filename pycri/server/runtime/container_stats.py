"""ContainerStats: CPU, memory and writable-layer usage of one container."""

import asyncio

from pycri.api import api_pb2
from pycri.container.operations import container_stats
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ContainerStatsRequest) -> api_pb2.ContainerStatsResponse:
    record = daemon.containers.get(request.container_id)
    stats = await asyncio.to_thread(container_stats, daemon.containers.ctx, record)
    return api_pb2.ContainerStatsResponse(stats=stats)

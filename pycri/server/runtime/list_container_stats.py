"""ListContainerStats: stats of the running containers the filter picks."""

import asyncio

from pycri.api import api_pb2
from pycri.container.operations import container_stats
from pycri.daemon import Daemon
from pycri.state.containers import ContainerState


async def collect(daemon: Daemon, wanted: api_pb2.ContainerStatsFilter) -> list[api_pb2.ContainerStats]:
    selector = api_pb2.ContainerFilter(
        id=wanted.id,
        pod_sandbox_id=wanted.pod_sandbox_id,
        label_selector=wanted.label_selector,
        state=api_pb2.ContainerStateValue(state=ContainerState.RUNNING.proto),
    )
    picked = [daemon.containers.get(entry.id) for entry in daemon.containers.list(selector)]
    ctx = daemon.containers.ctx
    return await asyncio.to_thread(lambda: [container_stats(ctx, record) for record in picked])


async def handle(daemon: Daemon, request: api_pb2.ListContainerStatsRequest) -> api_pb2.ListContainerStatsResponse:
    return api_pb2.ListContainerStatsResponse(stats=await collect(daemon, request.filter))

"""StreamPodSandboxStats: ListPodSandboxStats in pages."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.paging import pages
from pycri.server.runtime.list_pod_sandbox_stats import collect


async def handle(
    daemon: Daemon, request: api_pb2.StreamPodSandboxStatsRequest
) -> AsyncIterator[api_pb2.StreamPodSandboxStatsResponse]:
    stats = await collect(daemon, request.filter)
    for page in pages(stats):
        yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=page)

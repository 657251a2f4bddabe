"""StreamPodSandboxMetrics: ListPodSandboxMetrics in pages."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.paging import pages
from pycri.server.runtime.list_pod_sandbox_metrics import collect


async def handle(
    daemon: Daemon, request: api_pb2.StreamPodSandboxMetricsRequest
) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
    metrics = await collect(daemon)
    for page in pages(metrics):
        yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=page)

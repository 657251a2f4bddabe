"""StreamPodSandboxMetrics: ListPodSandboxMetrics in pages."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.runtime.list_pod_sandbox_metrics import collect

PAGE_SIZE = 100


async def handle(
    daemon: Daemon, request: api_pb2.StreamPodSandboxMetricsRequest
) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
    metrics = await collect(daemon)
    for start in range(0, len(metrics), PAGE_SIZE):
        yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=metrics[start : start + PAGE_SIZE])

"""ListPodSandboxMetrics: the metrics of every ready pod and its running containers."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.sandbox.metrics import pod_sandbox_metrics


async def collect(daemon: Daemon) -> list[api_pb2.PodSandboxMetrics]:
    ready = [record for record in daemon.sandboxes.records() if record.ready]
    return [await pod_sandbox_metrics(record, daemon.containers) for record in ready]


async def handle(
    daemon: Daemon, request: api_pb2.ListPodSandboxMetricsRequest
) -> api_pb2.ListPodSandboxMetricsResponse:
    return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=await collect(daemon))

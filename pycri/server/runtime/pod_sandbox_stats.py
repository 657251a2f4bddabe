"""PodSandboxStats: the pod's cgroup, network and containers."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.sandbox.stats import pod_sandbox_stats


async def handle(daemon: Daemon, request: api_pb2.PodSandboxStatsRequest) -> api_pb2.PodSandboxStatsResponse:
    record = daemon.sandboxes.get(request.pod_sandbox_id)
    return api_pb2.PodSandboxStatsResponse(stats=await pod_sandbox_stats(record, daemon.containers))

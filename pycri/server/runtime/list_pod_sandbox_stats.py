"""ListPodSandboxStats: stats of the ready pods the filter picks."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.sandbox.stats import pod_sandbox_stats


async def collect(daemon: Daemon, wanted: api_pb2.PodSandboxStatsFilter) -> list[api_pb2.PodSandboxStats]:
    if wanted.id:
        found = daemon.sandboxes.find(wanted.id)
        candidates = [found] if found is not None else []
    else:
        candidates = daemon.sandboxes.records()
    picked = [
        record
        for record in candidates
        if record.ready and all(record.config.labels.get(k) == v for k, v in wanted.label_selector.items())
    ]
    return [await pod_sandbox_stats(record, daemon.containers) for record in picked]


async def handle(daemon: Daemon, request: api_pb2.ListPodSandboxStatsRequest) -> api_pb2.ListPodSandboxStatsResponse:
    return api_pb2.ListPodSandboxStatsResponse(stats=await collect(daemon, request.filter))

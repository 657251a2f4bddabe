"""StreamPodSandboxes: ListPodSandbox in pages, for nodes with many pods."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon

PAGE_SIZE = 100


async def handle(
    daemon: Daemon, request: api_pb2.StreamPodSandboxesRequest
) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
    sandboxes = daemon.sandboxes.list(request.filter)
    for start in range(0, len(sandboxes), PAGE_SIZE):
        yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=sandboxes[start : start + PAGE_SIZE])

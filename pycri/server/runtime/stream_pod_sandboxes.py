"""StreamPodSandboxes: ListPodSandbox in pages, for nodes with many pods."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.paging import pages


async def handle(
    daemon: Daemon, request: api_pb2.StreamPodSandboxesRequest
) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
    sandboxes = daemon.sandboxes.list(request.filter)
    for page in pages(sandboxes):
        yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=page)

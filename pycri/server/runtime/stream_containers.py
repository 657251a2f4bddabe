"""StreamContainers: ListContainers in pages."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.runtime.list_containers import listed

PAGE_SIZE = 100


async def handle(
    daemon: Daemon, request: api_pb2.StreamContainersRequest
) -> AsyncIterator[api_pb2.StreamContainersResponse]:
    containers = listed(daemon, request.filter)
    for start in range(0, len(containers), PAGE_SIZE):
        yield api_pb2.StreamContainersResponse(containers=containers[start : start + PAGE_SIZE])

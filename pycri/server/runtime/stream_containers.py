"""StreamContainers: ListContainers in pages."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.paging import pages


async def handle(
    daemon: Daemon, request: api_pb2.StreamContainersRequest
) -> AsyncIterator[api_pb2.StreamContainersResponse]:
    containers = daemon.containers.list(request.filter)
    for page in pages(containers):
        yield api_pb2.StreamContainersResponse(containers=page)

"""ListContainers: every container, or those the filter picks (from memory)."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ListContainersRequest) -> api_pb2.ListContainersResponse:
    return api_pb2.ListContainersResponse(containers=daemon.containers.list(request.filter))

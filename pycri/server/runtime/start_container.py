"""StartContainer: `runc start` a created container."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.StartContainerRequest) -> api_pb2.StartContainerResponse:
    await daemon.containers.start(request.container_id)
    return api_pb2.StartContainerResponse()

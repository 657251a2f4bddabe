"""RemoveContainer: kill if needed, delete, drop the writable layer; idempotent."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.RemoveContainerRequest) -> api_pb2.RemoveContainerResponse:
    await daemon.containers.remove(request.container_id)
    return api_pb2.RemoveContainerResponse()

"""StopContainer: the stop signal, SIGKILL after the timeout; stopping a stopped or absent container is fine."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.StopContainerRequest) -> api_pb2.StopContainerResponse:
    await daemon.containers.stop(request.container_id, float(request.timeout))
    return api_pb2.StopContainerResponse()

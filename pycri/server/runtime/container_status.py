"""ContainerStatus: state, exit, times, mounts, image, user and log path of one container (from memory)."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ContainerStatusRequest) -> api_pb2.ContainerStatusResponse:
    return daemon.containers.status(request.container_id, request.verbose)

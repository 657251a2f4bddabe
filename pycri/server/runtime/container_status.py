"""ContainerStatus: state, exit, times, mounts, image, user and log path of one container (from memory)."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ContainerStatusRequest) -> api_pb2.ContainerStatusResponse | bytes:
    if not request.verbose:
        return daemon.containers.status_reply(request.container_id)
    return daemon.containers.status(request.container_id, request.verbose)

"""CheckpointContainer: a running container's CRIU images, rootfs changes and metadata as an archive."""

from pycri.api import api_pb2
from pycri.container.checkpoint import checkpoint_container
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.CheckpointContainerRequest) -> api_pb2.CheckpointContainerResponse:
    record = daemon.containers.get(request.container_id)
    await checkpoint_container(daemon.containers.ctx, daemon.locks, record, request.location, request.timeout)
    return api_pb2.CheckpointContainerResponse()

"""UpdateContainerResources: `runc update` the container's cgroup limits."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(
    daemon: Daemon, request: api_pb2.UpdateContainerResourcesRequest
) -> api_pb2.UpdateContainerResourcesResponse:
    await daemon.containers.update_resources(request.container_id, request.linux)
    return api_pb2.UpdateContainerResourcesResponse()

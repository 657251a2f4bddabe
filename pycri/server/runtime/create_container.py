"""CreateContainer: prepare the rootfs and bundle, and have conmon run `runc create`."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.CreateContainerRequest) -> api_pb2.CreateContainerResponse:
    container_id = await daemon.containers.create(request.pod_sandbox_id, request.config, request.sandbox_config)
    return api_pb2.CreateContainerResponse(container_id=container_id)

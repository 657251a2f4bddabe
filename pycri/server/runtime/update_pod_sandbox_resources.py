"""UpdatePodSandboxResources: new pod-level resources and overhead after a resize."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(
    daemon: Daemon, request: api_pb2.UpdatePodSandboxResourcesRequest
) -> api_pb2.UpdatePodSandboxResourcesResponse:
    await daemon.sandboxes.update_resources(
        request.pod_sandbox_id,
        request.overhead if request.HasField("overhead") else None,
        request.resources if request.HasField("resources") else None,
    )
    return api_pb2.UpdatePodSandboxResourcesResponse()

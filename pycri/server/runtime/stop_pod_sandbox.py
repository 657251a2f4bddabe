"""StopPodSandbox: stop the pod's containers and release its network; idempotent."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.StopPodSandboxRequest) -> api_pb2.StopPodSandboxResponse:
    await daemon.sandboxes.stop(request.pod_sandbox_id)
    return api_pb2.StopPodSandboxResponse()

"""RunPodSandbox: create a pod sandbox and return once it is ready."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.RunPodSandboxRequest) -> api_pb2.RunPodSandboxResponse:
    sandbox_id = await daemon.sandboxes.run(request.config, request.runtime_handler)
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

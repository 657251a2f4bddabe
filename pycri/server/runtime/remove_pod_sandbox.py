"""RemovePodSandbox: stop if need be, then remove the pod and its containers; idempotent."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.RemovePodSandboxRequest) -> api_pb2.RemovePodSandboxResponse:
    await daemon.sandboxes.remove(request.pod_sandbox_id)
    return api_pb2.RemovePodSandboxResponse()

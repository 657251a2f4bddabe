"""ListPodSandbox: the sandboxes a filter (id or id prefix, state, labels) selects."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ListPodSandboxRequest) -> api_pb2.ListPodSandboxResponse:
    return api_pb2.ListPodSandboxResponse(items=daemon.sandboxes.list(request.filter))

"""ListPodSandbox: the sandboxes a filter (id or id prefix, state, labels) selects (from memory, entries kept
serialised)."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ListPodSandboxRequest) -> bytes:
    return daemon.sandboxes.list_reply(request.filter)

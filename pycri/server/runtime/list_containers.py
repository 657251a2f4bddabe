"""ListContainers: every container, or those the filter picks (from memory, entries kept serialised)."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ListContainersRequest) -> bytes:
    return daemon.containers.list_reply(request.filter)

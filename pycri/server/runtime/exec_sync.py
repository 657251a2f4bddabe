"""ExecSync: run a command in a container and return its output and exit code."""

from pycri.api import api_pb2
from pycri.container.operations import exec_sync
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ExecSyncRequest) -> api_pb2.ExecSyncResponse:
    return await exec_sync(daemon.containers, request.container_id, list(request.cmd), float(request.timeout))

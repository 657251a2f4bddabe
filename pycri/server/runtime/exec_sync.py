"""ExecSync: run a command in a container and return its output and exit code."""

from pycri.api import api_pb2
from pycri.container.operations import exec_sync
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ExecSyncRequest) -> api_pb2.ExecSyncResponse:
    record = daemon.containers.running(request.container_id)
    return await exec_sync(daemon.containers.ctx, record, list(request.cmd), float(request.timeout))

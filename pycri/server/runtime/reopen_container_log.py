"""ReopenContainerLog: conmon reopens the log file after kubelet rotated it."""

from pycri.api import api_pb2
from pycri.container.operations import reopen_log
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ReopenContainerLogRequest) -> api_pb2.ReopenContainerLogResponse:
    await reopen_log(daemon.containers.ctx, daemon.containers.running(request.container_id))
    return api_pb2.ReopenContainerLogResponse()

"""Exec: a one-time URL of the streaming server where the client runs a command in a container."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
    return api_pb2.ExecResponse(url=daemon.streams.exec_url(request))

"""Attach: a one-time URL of the streaming server where the client joins a container's stdio."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
    return api_pb2.AttachResponse(url=daemon.streams.attach_url(request))

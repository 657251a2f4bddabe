"""PortForward: a one-time URL of the streaming server that forwards to ports in a pod's network namespace."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.PortForwardRequest) -> api_pb2.PortForwardResponse:
    return api_pb2.PortForwardResponse(url=daemon.streams.port_forward_url(request))

"""PodSandboxStatus: one sandbox's state and network; NOT_FOUND for an unknown id."""

import time

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.state.views import int64_field

TIMESTAMP_FIELD = api_pb2.PodSandboxStatusResponse.TIMESTAMP_FIELD_NUMBER


async def handle(daemon: Daemon, request: api_pb2.PodSandboxStatusRequest) -> api_pb2.PodSandboxStatusResponse | bytes:
    if not request.verbose:
        return daemon.sandboxes.status_reply(request.pod_sandbox_id) + int64_field(TIMESTAMP_FIELD, time.time_ns())
    status, info = daemon.sandboxes.status(request.pod_sandbox_id, request.verbose)
    return api_pb2.PodSandboxStatusResponse(status=status, info=info, timestamp=time.time_ns())

"""ContainerStatus: state, exit, times, mounts, image and log path of one container."""

import asyncio

from pycri.api import api_pb2
from pycri.container.operations import runtime_spec
from pycri.container.views import container_status, verbose_info
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ContainerStatusRequest) -> api_pb2.ContainerStatusResponse:
    record = daemon.containers.get(request.container_id)
    daemon.containers.refresh(record)
    spec = await asyncio.to_thread(runtime_spec, daemon.containers, record)
    reply = api_pb2.ContainerStatusResponse(status=container_status(record))
    user = (spec or {}).get("process", {}).get("user")
    if user:
        linux = reply.status.user.linux
        linux.uid, linux.gid = user.get("uid", 0), user.get("gid", 0)
        linux.supplemental_groups.extend(user.get("additionalGids") or [])
    if request.verbose:
        reply.info.update(verbose_info(record, spec))
    return reply

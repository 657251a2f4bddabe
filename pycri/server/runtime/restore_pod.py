"""RestorePod: not implemented, as CheckpointPod is not: there is no pod archive to restore."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.errors import Unimplemented


async def handle(daemon: Daemon, request: api_pb2.RestorePodRequest) -> api_pb2.RestorePodResponse:
    raise Unimplemented(
        "RestorePod: pycri writes no pod checkpoints to restore; run a pod and restore each container "
        "with CreateContainer, its image naming the container's checkpoint archive"
    )

"""CheckpointPod: not implemented; CheckpointContainer checkpoints the pod's containers one by one."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.errors import Unimplemented


async def handle(daemon: Daemon, request: api_pb2.CheckpointPodRequest) -> api_pb2.CheckpointPodResponse:
    raise Unimplemented(
        "CheckpointPod: pycri does not checkpoint whole pods (no pod archive format is written); "
        "CheckpointContainer checkpoints each container, and CreateContainer restores one from its archive"
    )

"""Version: who is serving."""

from pycri import __version__
from pycri.api import api_pb2
from pycri.daemon import Daemon

CRI_API_VERSION = "v1"
# The kubelet-facing API version field; every CRI runtime reports this constant.
KUBELET_API_VERSION = "0.1.0"


async def handle(daemon: Daemon, request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
    return api_pb2.VersionResponse(
        version=KUBELET_API_VERSION,
        runtime_name="pycri",
        runtime_version=__version__,
        runtime_api_version=CRI_API_VERSION,
    )

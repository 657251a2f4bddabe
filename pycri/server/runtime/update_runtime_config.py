"""UpdateRuntimeConfig: kubelet hands over the node's pod CIDR for CNI."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.UpdateRuntimeConfigRequest) -> api_pb2.UpdateRuntimeConfigResponse:
    await daemon.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
    return api_pb2.UpdateRuntimeConfigResponse()

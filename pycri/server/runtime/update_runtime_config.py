"""UpdateRuntimeConfig: kubelet hands over the node's pod CIDR for CNI."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.errors import InvalidArgument
from pycri.network.cni import parse_pod_cidrs


def check_pod_cidr(text: str) -> None:
    """InvalidArgument unless the network can take `text`: CIDRs joined by commas (a dual-stack kubelet sends two)."""
    try:
        parse_pod_cidrs(text)
    except ValueError as exc:
        raise InvalidArgument(f"runtime_config.network_config.pod_cidr: {text!r}: {exc}") from None


async def handle(daemon: Daemon, request: api_pb2.UpdateRuntimeConfigRequest) -> api_pb2.UpdateRuntimeConfigResponse:
    check_pod_cidr(request.runtime_config.network_config.pod_cidr)
    await daemon.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
    return api_pb2.UpdateRuntimeConfigResponse()

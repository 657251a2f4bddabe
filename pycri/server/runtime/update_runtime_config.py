"""UpdateRuntimeConfig: kubelet hands over the node's pod CIDR for CNI."""

import ipaddress

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.errors import InvalidArgument

FIELD = "runtime_config.network_config.pod_cidr"


def check_pod_cidr(text: str) -> None:
    """InvalidArgument unless `text` is empty or CIDRs joined by commas (a dual-stack kubelet sends two)."""
    if not text:
        return
    for cidr in text.split(","):
        try:
            if "/" not in cidr:
                raise ValueError(cidr)
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidArgument(f"{FIELD}: {cidr!r} is not a CIDR") from None


async def handle(daemon: Daemon, request: api_pb2.UpdateRuntimeConfigRequest) -> api_pb2.UpdateRuntimeConfigResponse:
    check_pod_cidr(request.runtime_config.network_config.pod_cidr)
    await daemon.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
    return api_pb2.UpdateRuntimeConfigResponse()

"""RuntimeConfig: the cgroup driver kubelet must match."""

from pycri.api import api_pb2
from pycri.daemon import Daemon

_DRIVERS = {"cgroupfs": api_pb2.CgroupDriver.CGROUPFS, "systemd": api_pb2.CgroupDriver.SYSTEMD}


async def handle(daemon: Daemon, request: api_pb2.RuntimeConfigRequest) -> api_pb2.RuntimeConfigResponse:
    linux = api_pb2.LinuxRuntimeConfiguration(cgroup_driver=_DRIVERS[daemon.config.runtime.cgroup_driver])
    return api_pb2.RuntimeConfigResponse(linux=linux)

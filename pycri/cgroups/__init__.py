"""cgroup placement, reading and removal under the cgroupfs or the systemd driver, on cgroup v1,
hybrid and v2 hosts."""

from pycri.cgroups.details import CgroupDetails
from pycri.cgroups.layout import CgroupLayout, host_layout, parse_mountinfo
from pycri.cgroups.limits import CgroupLimits, LimitError
from pycri.cgroups.manager import CgroupManager, make_cgroup_manager
from pycri.cgroups.systemd import SystemdBus, SystemdError, TransientUnit
from pycri.cgroups.usage import CgroupStats

__all__ = [
    "CgroupDetails",
    "CgroupLayout",
    "CgroupLimits",
    "CgroupManager",
    "CgroupStats",
    "LimitError",
    "SystemdBus",
    "SystemdError",
    "TransientUnit",
    "host_layout",
    "make_cgroup_manager",
    "parse_mountinfo",
]

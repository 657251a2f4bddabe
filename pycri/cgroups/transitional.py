"""Transitional: the host's cgroupfs manager for the callers that are not yet handed the daemon's
CgroupManager (pycri/sandbox, pycri/container, pycri/oci/conmon.py, pycri/server and some tests).
Delete this module, the `cgroups=None` defaults that use it and the module-level functions at the
end of pycri/stats/cgroups.py once pycri/daemon.py builds the manager and passes it down."""

from __future__ import annotations

import functools

from pycri.cgroups.cgroupfs import CONMON_IN_POD, CgroupfsManager
from pycri.cgroups.layout import host_layout

DEFAULT_PARENT = "/pycri"


@functools.cache
def host_cgroupfs() -> CgroupfsManager:
    return CgroupfsManager(DEFAULT_PARENT, CONMON_IN_POD, host_layout())

"""The configured OCI runtime handlers as drivers."""

from __future__ import annotations

from pycri.cgroups.cgroupfs import CONMON_IN_POD
from pycri.cgroups.manager import make_cgroup_manager
from pycri.config import Config
from pycri.oci.runtime import OciRuntime, RuntimeHandler


def oci_runtime(config: Config, handler: str) -> OciRuntime:
    return OciRuntime(
        RuntimeHandler(
            name=handler,
            path=config.handler(handler).path,
            root=config.handler_root(handler),
            systemd_cgroup=config.runtime.cgroup_driver == "systemd",
        )
    )


def cgroups_path(config: Config, parent: str, leaf: str) -> str:
    """Transitional (see pycri/cgroups/transitional.py): callers move to CgroupManager.container_path."""
    runtime = config.runtime
    return make_cgroup_manager(runtime.cgroup_driver, runtime.cgroup_parent, CONMON_IN_POD).container_path(parent, leaf)

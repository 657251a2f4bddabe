"""The configured OCI runtime handlers as drivers, and where their containers' cgroups go."""

from __future__ import annotations

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
    """The OCI cgroupsPath of `leaf` (a container or pause id) under the pod's cgroup parent."""
    if config.runtime.cgroup_driver == "systemd":
        return f"{parent}:pycri:{leaf}"
    return f"{parent.rstrip('/')}/{leaf}"

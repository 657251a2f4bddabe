"""What a pod's containers join and mount, for the OCI spec."""

from __future__ import annotations

from pathlib import Path

from pycri.oci.spec import SandboxPaths
from pycri.state.sandboxes import SandboxRecord

HOST_SHM = Path("/dev/shm")


def sandbox_paths(record: SandboxRecord) -> SandboxPaths:
    return SandboxPaths(
        netns=record.netns_path,
        ipc=record.ipc_path,
        uts=record.uts_path,
        pid=Path(f"/proc/{record.pause_pid}/ns/pid") if record.pause_pid else None,
        hostname=record.hostname_path,
        hosts=record.hosts_path,
        resolv_conf=record.resolv_conf_path,
        shm=record.shm_path or HOST_SHM,
        userns=record.userns_path,
        user_mappings=record.user_namespace,
    )

"""The NamespaceManager: a pod's pinned namespaces and its /dev/shm.

Each pod with its own network (and then UTS) or IPC namespace has it pinned by a bind
mount under its state dir, with no process holding it. A pod in a user namespace of its own
has that pinned too, and its other namespaces are made inside it (pycri.userns.namespaces).
Every method blocks (run them in a thread) and every removal is idempotent, so teardown and
recovery can call it on a pod that is half made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from pycri.network.netns import create_namespace, is_namespace_pinned, remove_namespace
from pycri.sandbox.shm import mount_shm, unmount_shm
from pycri.sandbox.sysctls import Sysctl, apply_sysctls
from pycri.state.sandboxes import SandboxRecord
from pycri.userns.namespaces import PodNamespacePins, create_pod_namespaces


class NamespaceManager(Protocol):
    def pin(self, record: SandboxRecord, hostname: str) -> None: ...

    def apply_sysctls(self, record: SandboxRecord, sysctls: list[Sysctl]) -> None: ...

    def release(self, record: SandboxRecord) -> None: ...

    def intact(self, record: SandboxRecord) -> bool: ...

    def netns_pinned(self, path: Path) -> bool: ...


class HostNamespaces:
    """The real thing: unshare(2), bind mounts, tmpfs."""

    def pin(self, record: SandboxRecord, hostname: str) -> None:
        """Pin the pod's own namespaces and mount its shm; a failure leaves what was made for release()."""
        mappings, userns_path = record.user_namespace, record.userns_path
        if mappings is not None and userns_path is not None:
            pins = PodNamespacePins(userns_path, record.netns_path, record.ipc_path, record.uts_path)
            create_pod_namespaces(mappings, pins, hostname)
        else:
            if record.netns_path is not None:
                create_namespace("net", record.netns_path)
            if record.ipc_path is not None:
                create_namespace("ipc", record.ipc_path)
            if record.uts_path is not None:
                create_namespace("uts", record.uts_path, hostname=hostname)
        if record.shm_path is not None:
            mount_shm(record.shm_path)

    def apply_sysctls(self, record: SandboxRecord, sysctls: list[Sysctl]) -> None:
        apply_sysctls(sysctls, netns_path=record.netns_path, ipc_path=record.ipc_path)

    def release(self, record: SandboxRecord) -> None:
        for pin in (record.netns_path, record.ipc_path, record.uts_path, record.userns_path):
            if pin is not None:
                remove_namespace(pin)
        if record.shm_path is not None:
            unmount_shm(record.shm_path)

    def intact(self, record: SandboxRecord) -> bool:
        """Whether every pin and the shm mount are still there (after a reboot /run is empty)."""
        pins = [p for p in (record.netns_path, record.ipc_path, record.uts_path, record.userns_path) if p is not None]
        shm_ok = record.shm_path is None or os.path.ismount(record.shm_path)
        return shm_ok and all(is_namespace_pinned(pin) for pin in pins)

    def netns_pinned(self, path: Path) -> bool:
        return is_namespace_pinned(path)

"""Sandbox records: what pycri knows about one pod sandbox, and their rows in the store."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.oci.spec import SandboxPaths
from pycri.state.store import Store

HOSTNAME_FILE = "hostname"
HOSTS_FILE = "hosts"
RESOLV_CONF_FILE = "resolv.conf"
HOST_SHM = Path("/dev/shm")


class SandboxState(enum.Enum):
    # A sandbox being set up is invisible to CRI callers; a row left in this state by a
    # crash is torn down at the next start.
    CREATING = "creating"
    READY = "ready"
    NOTREADY = "notready"


def reserved_name(metadata: api_pb2.PodSandboxMetadata) -> str:
    """The name a sandbox holds while it exists: no two sandboxes share it."""
    return f"{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"


@dataclass
class SandboxRecord:
    """One pod sandbox. `netns_path`, `ipc_path` and `uts_path` name the pinned namespaces
    (None: the pod uses the host's); `shm_path` is the pod's /dev/shm (None: the host's)."""

    id: str
    config: api_pb2.PodSandboxConfig
    runtime_handler: str
    created_at: int
    state: SandboxState
    root_dir: Path  # hostname, hosts, resolv.conf
    state_dir: Path  # namespace pins and the shm mount
    cgroup_parent: str
    log_directory: str
    netns_path: Path | None = None
    ipc_path: Path | None = None
    uts_path: Path | None = None
    shm_path: Path | None = None
    ips: tuple[str, ...] = ()
    cni_result: dict[str, Any] | None = None
    pause_pid: int | None = None
    # In memory only: nothing of the sandbox is left to release (network, namespace pins, shm),
    # so another stop has nothing to do. False after a restart: the first stop then runs in full.
    torn_down: bool = False

    @property
    def metadata(self) -> api_pb2.PodSandboxMetadata:
        return self.config.metadata

    @property
    def name(self) -> str:
        return reserved_name(self.config.metadata)

    @property
    def namespace_options(self) -> api_pb2.NamespaceOption:
        return self.config.linux.security_context.namespace_options

    @property
    def host_network(self) -> bool:
        return self.namespace_options.network == api_pb2.NamespaceMode.NODE

    @property
    def host_ipc(self) -> bool:
        return self.namespace_options.ipc == api_pb2.NamespaceMode.NODE

    @property
    def host_pid(self) -> bool:
        return self.namespace_options.pid == api_pb2.NamespaceMode.NODE

    @property
    def shared_pid(self) -> bool:
        """The pod's containers share one PID namespace, whose PID 1 is the pause process."""
        return self.namespace_options.pid == api_pb2.NamespaceMode.POD

    @property
    def hostname_path(self) -> Path:
        return self.root_dir / HOSTNAME_FILE

    @property
    def hosts_path(self) -> Path:
        return self.root_dir / HOSTS_FILE

    @property
    def resolv_conf_path(self) -> Path:
        return self.root_dir / RESOLV_CONF_FILE

    @property
    def ready(self) -> bool:
        return self.state is SandboxState.READY

    def sandbox_paths(self) -> SandboxPaths:
        """What a container of this pod joins and mounts (for pycri.oci.spec)."""
        return SandboxPaths(
            netns=self.netns_path,
            ipc=self.ipc_path,
            uts=self.uts_path,
            pid=Path(f"/proc/{self.pause_pid}/ns/pid") if self.pause_pid else None,
            hostname=self.hostname_path,
            hosts=self.hosts_path,
            resolv_conf=self.resolv_conf_path,
            shm=self.shm_path or HOST_SHM,
        )


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


class SandboxRows:
    """The `sandboxes` table. Calls block on SQLite: the service makes them from threads."""

    def __init__(self, store: Store, root_dir: Path, state_dir: Path) -> None:
        self._store = store
        self._root_dir = root_dir
        self._state_dir = state_dir

    def insert(self, record: SandboxRecord) -> None:
        metadata = record.metadata
        self._store.execute(
            "INSERT INTO sandboxes (id, name, pod_name, pod_namespace, pod_uid, attempt, state, created_at,"
            " runtime_handler, config, netns_path, ipc_path, uts_path, shm_path, ips, cni_result,"
            " cgroup_parent, log_directory, pause_pid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.name,
                metadata.name,
                metadata.namespace,
                metadata.uid,
                metadata.attempt,
                record.state.value,
                record.created_at,
                record.runtime_handler,
                record.config.SerializeToString(),
                _text(record.netns_path),
                _text(record.ipc_path),
                _text(record.uts_path),
                _text(record.shm_path),
                json.dumps(list(record.ips)),
                None if record.cni_result is None else json.dumps(record.cni_result),
                record.cgroup_parent,
                record.log_directory,
                record.pause_pid,
            ),
        )

    def update(self, record: SandboxRecord) -> None:
        """Save what changes over a sandbox's life: state, IPs, CNI result, pause PID."""
        self._store.execute(
            "UPDATE sandboxes SET state = ?, ips = ?, cni_result = ?, pause_pid = ? WHERE id = ?",
            (
                record.state.value,
                json.dumps(list(record.ips)),
                None if record.cni_result is None else json.dumps(record.cni_result),
                record.pause_pid,
                record.id,
            ),
        )

    def delete(self, sandbox_id: str) -> None:
        self._store.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def load_all(self) -> list[SandboxRecord]:
        rows = self._store.query("SELECT * FROM sandboxes ORDER BY created_at")
        return [self._record(row) for row in rows]

    def _record(self, row: Any) -> SandboxRecord:
        config = api_pb2.PodSandboxConfig.FromString(row["config"])
        return SandboxRecord(
            id=row["id"],
            config=config,
            runtime_handler=row["runtime_handler"],
            created_at=row["created_at"],
            state=SandboxState(row["state"]),
            root_dir=self._root_dir / row["id"],
            state_dir=self._state_dir / row["id"],
            cgroup_parent=row["cgroup_parent"],
            log_directory=row["log_directory"],
            netns_path=_path(row["netns_path"]),
            ipc_path=_path(row["ipc_path"]),
            uts_path=_path(row["uts_path"]),
            shm_path=_path(row["shm_path"]),
            ips=tuple(json.loads(row["ips"])),
            cni_result=None if row["cni_result"] is None else json.loads(row["cni_result"]),
            pause_pid=row["pause_pid"],
        )

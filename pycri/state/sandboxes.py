"""Pod sandbox records and their states: the one place a pod's state changes.

A pod is READY from the moment RunPodSandbox commits it until it is stopped, its pause
process ends, or the node reboots; then it is NOTREADY until it is removed. A pod being
set up has no record at all: its intent names what it is making.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.userns.mappings import UserNamespaceMappings, user_namespace

HOSTNAME_FILE = "hostname"
USERNS_PIN = "userns"
HOSTS_FILE = "hosts"
RESOLV_CONF_FILE = "resolv.conf"


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"

    @property
    def proto(self) -> api_pb2.PodSandboxState:
        if self is SandboxState.READY:
            return api_pb2.PodSandboxState.SANDBOX_READY
        return api_pb2.PodSandboxState.SANDBOX_NOTREADY


def reserved_name(metadata: api_pb2.PodSandboxMetadata) -> str:
    """The name a sandbox holds while it exists: no two sandboxes share it."""
    return f"{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"


@dataclass(frozen=True)
class SandboxRecord:
    """One pod sandbox. `netns_path`, `ipc_path` and `uts_path` name the pinned namespaces
    (None: the pod uses the host's); `shm_path` is the pod's /dev/shm (None: the host's)."""

    id: str
    config: api_pb2.PodSandboxConfig
    runtime_handler: str
    created_at: int
    state: SandboxState
    root_dir: Path  # hostname, hosts, resolv.conf
    state_dir: Path  # namespace pins, the shm mount, the pause bundle
    cgroup_parent: str
    log_directory: str
    netns_path: Path | None = None
    ipc_path: Path | None = None
    uts_path: Path | None = None
    shm_path: Path | None = None
    ips: tuple[str, ...] = ()
    cni_result: dict[str, Any] | None = None
    pause_pid: int | None = None
    pause_start_time: int | None = None

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
    def user_namespace(self) -> UserNamespaceMappings | None:
        """The mappings of the pod's own user namespace (checked by RunPodSandbox); None: the host's."""
        return user_namespace(self.namespace_options, "config.linux.security_context.namespace_options")

    @property
    def userns_path(self) -> Path | None:
        """Where the pod's own user namespace is pinned; it owns the pod's net, IPC and UTS namespaces."""
        return self.state_dir / USERNS_PIN if self.user_namespace is not None else None

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


# ---- transitions ----


def not_ready(record: SandboxRecord) -> SandboxRecord:
    """The pod lost what makes it ready (stopped, pause process gone, node rebooted)."""
    return dataclasses.replace(record, state=SandboxState.NOTREADY)


def stopped(record: SandboxRecord) -> SandboxRecord:
    """StopPodSandbox released the network, namespaces, shm and pause process."""
    return dataclasses.replace(record, state=SandboxState.NOTREADY, ips=(), pause_pid=None, pause_start_time=None)


def resources_updated(
    record: SandboxRecord,
    overhead: api_pb2.LinuxContainerResources | None,
    resources: api_pb2.LinuxContainerResources | None,
) -> SandboxRecord:
    """UpdatePodSandboxResources: the pod's config holds the overhead and resources last given
    (one left out is cleared, as kubelet sends the whole picture)."""
    config = api_pb2.PodSandboxConfig()
    config.CopyFrom(record.config)
    for name, value in (("overhead", overhead), ("resources", resources)):
        config.linux.ClearField(name)
        if value is not None:
            getattr(config.linux, name).CopyFrom(value)
    return dataclasses.replace(record, config=config)


# ---- rows ----

_COLUMNS = (
    "id, name, pod_name, pod_namespace, pod_uid, attempt, state, created_at, runtime_handler, config,"
    " netns_path, ipc_path, uts_path, shm_path, ips, cni_result, cgroup_parent, log_directory, pause_pid,"
    " pause_start_time"
)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def upsert_sql(record: SandboxRecord) -> tuple[str, tuple[Any, ...]]:
    metadata = record.metadata
    values = (
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
        record.pause_start_time,
    )
    marks = ", ".join("?" * len(values))
    return f"INSERT OR REPLACE INTO sandboxes ({_COLUMNS}) VALUES ({marks})", values


def from_row(row: Any, root_dir: Path, state_dir: Path) -> SandboxRecord:
    return SandboxRecord(
        id=row["id"],
        config=api_pb2.PodSandboxConfig.FromString(row["config"]),
        runtime_handler=row["runtime_handler"],
        created_at=row["created_at"],
        state=SandboxState(row["state"]),
        root_dir=root_dir / row["id"],
        state_dir=state_dir / row["id"],
        cgroup_parent=row["cgroup_parent"],
        log_directory=row["log_directory"],
        netns_path=_path(row["netns_path"]),
        ipc_path=_path(row["ipc_path"]),
        uts_path=_path(row["uts_path"]),
        shm_path=_path(row["shm_path"]),
        ips=tuple(json.loads(row["ips"])),
        cni_result=None if row["cni_result"] is None else json.loads(row["cni_result"]),
        pause_pid=row["pause_pid"],
        pause_start_time=row["pause_start_time"],
    )


def to_plan(record: SandboxRecord) -> dict[str, Any]:
    """The record as an intent's plan: everything RunPodSandbox is about to make is named by it."""
    sql, values = upsert_sql(record)
    names = [name.strip() for name in _COLUMNS.split(",")]
    plan = dict(zip(names, values, strict=True))
    plan["config"] = plan["config"].hex()
    return plan


def from_plan(plan: dict[str, Any], root_dir: Path, state_dir: Path) -> SandboxRecord:
    row = dict(plan)
    row["config"] = bytes.fromhex(row["config"])
    return from_row(row, root_dir, state_dir)

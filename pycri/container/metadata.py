"""Container rows in the metadata store."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pycri.api import api_pb2
from pycri.state.store import Store


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"

    @property
    def proto(self) -> int:
        return {
            ContainerState.CREATED: api_pb2.ContainerState.CONTAINER_CREATED,
            ContainerState.RUNNING: api_pb2.ContainerState.CONTAINER_RUNNING,
            ContainerState.EXITED: api_pb2.ContainerState.CONTAINER_EXITED,
        }[self]


def reserved_name(config: api_pb2.ContainerConfig, sandbox: api_pb2.PodSandboxConfig) -> str:
    """The name a container holds while it exists: unique per pod, name and attempt."""
    pod = sandbox.metadata
    return f"{config.metadata.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.metadata.attempt}"


@dataclass
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    config: api_pb2.ContainerConfig
    image_id: str
    image_ref: str
    state: ContainerState
    created_at: int
    log_path: str
    runtime_handler: str
    cgroups_path: str
    stop_signal: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    resources: api_pb2.LinuxContainerResources | None = None


_PROTO_COLUMNS = {"config": api_pb2.ContainerConfig, "resources": api_pb2.LinuxContainerResources}


class ContainerRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def _columns(record: ContainerRecord) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for column in fields(record):
            value = getattr(record, column.name)
            if column.name in _PROTO_COLUMNS:
                value = None if value is None else value.SerializeToString()
            elif isinstance(value, ContainerState):
                value = value.value
            values[column.name] = value
        return values

    def insert(self, record: ContainerRecord) -> None:
        values = self._columns(record)
        names = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        with self._store.transaction() as db:
            db.execute(f"INSERT INTO containers ({names}) VALUES ({marks})", values)

    def update(self, record: ContainerRecord) -> None:
        values = self._columns(record)
        assignments = ", ".join(f"{name} = :{name}" for name in values if name != "id")
        with self._store.transaction() as db:
            db.execute(f"UPDATE containers SET {assignments} WHERE id = :id", values)

    def delete(self, container_id: str) -> None:
        self._store.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def load_all(self) -> list[ContainerRecord]:
        return [self._record(row) for row in self._store.query("SELECT * FROM containers ORDER BY created_at")]

    @staticmethod
    def _record(row: Any) -> ContainerRecord:
        values = dict(row)
        for column, message in _PROTO_COLUMNS.items():
            if values[column] is not None:
                values[column] = message.FromString(values[column])
        values["state"] = ContainerState(values["state"])
        return ContainerRecord(**values)


def bundle_dir(state_dir: Path, container_id: str) -> Path:
    return state_dir / "containers" / container_id


def layer_dir(root_dir: Path, container_id: str) -> Path:
    return root_dir / "containers" / container_id

"""Container records and their state machine: the one place a container's state changes.

    CREATED -> RUNNING -> EXITED
        \\________________/^
    UNKNOWN: the truth could not be read (the runtime failed to answer); it may
    still become RUNNING or EXITED once it can be.

Every function here is pure: it returns the next record or raises IllegalTransition.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any

from pycri.api import api_pb2


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"

    @property
    def proto(self) -> api_pb2.ContainerState:
        return _PROTO[self]


_PROTO = {
    ContainerState.CREATED: api_pb2.ContainerState.CONTAINER_CREATED,
    ContainerState.RUNNING: api_pb2.ContainerState.CONTAINER_RUNNING,
    ContainerState.EXITED: api_pb2.ContainerState.CONTAINER_EXITED,
    ContainerState.UNKNOWN: api_pb2.ContainerState.CONTAINER_UNKNOWN,
}
_NEXT = {
    ContainerState.CREATED: {ContainerState.RUNNING, ContainerState.EXITED, ContainerState.UNKNOWN},
    ContainerState.RUNNING: {ContainerState.EXITED, ContainerState.UNKNOWN},
    ContainerState.UNKNOWN: {ContainerState.RUNNING, ContainerState.EXITED},
    ContainerState.EXITED: set(),
}

# Exit code and reasons when no exit status was recorded (conmon gone, node rebooted).
UNKNOWN_EXIT_CODE = 255
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM = "OOMKilled"
REASON_UNKNOWN = "Unknown"


class IllegalTransition(ValueError):
    pass


def reserved_name(config: api_pb2.ContainerConfig, sandbox: api_pb2.PodSandboxConfig) -> str:
    """The name a container holds while it exists: unique per pod, name and attempt."""
    pod = sandbox.metadata
    return f"{config.metadata.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.metadata.attempt}"


@dataclass(frozen=True)
class ProcessUser:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
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
    user: ProcessUser = ProcessUser()
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    pid_start_time: int = 0
    resources: api_pb2.LinuxContainerResources | None = None
    # The checkpoint archive CreateContainer restored the container from (it runs from then on);
    # pycri's own word, never taken from the request.
    restored_from: str = ""


def _move(record: ContainerRecord, to: ContainerState, **changes: Any) -> ContainerRecord:
    if to not in _NEXT[record.state]:
        raise IllegalTransition(f"container {record.id} is {record.state.value}; it cannot become {to.value}")
    return dataclasses.replace(record, state=to, **changes)


def started(record: ContainerRecord, at: int) -> ContainerRecord:
    return _move(record, ContainerState.RUNNING, started_at=at)


def exited(
    record: ContainerRecord, code: int, at: int, *, oom_killed: bool = False, reason: str = "", message: str = ""
) -> ContainerRecord:
    """The process ended; the finish time is never before the start (clocks differ in grain)."""
    if not reason:
        reason = REASON_OOM if oom_killed else REASON_COMPLETED if code == 0 else REASON_ERROR
    return _move(
        record, ContainerState.EXITED, exit_code=code, finished_at=max(at, record.started_at), reason=reason,
        message=message,
    )  # fmt: skip


def unknown(record: ContainerRecord, message: str) -> ContainerRecord:
    return _move(record, ContainerState.UNKNOWN, reason=REASON_UNKNOWN, message=message)


def resources_updated(record: ContainerRecord, resources: api_pb2.LinuxContainerResources) -> ContainerRecord:
    if record.state is ContainerState.EXITED:
        raise IllegalTransition(f"container {record.id} has exited")
    return dataclasses.replace(record, resources=resources)


# ---- rows ----

_PROTO_COLUMNS: dict[str, type[api_pb2.ContainerConfig] | type[api_pb2.LinuxContainerResources]] = {
    "config": api_pb2.ContainerConfig,
    "resources": api_pb2.LinuxContainerResources,
}


def to_row(record: ContainerRecord) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in dataclasses.fields(record):
        value = getattr(record, column.name)
        if column.name in _PROTO_COLUMNS:
            value = None if value is None else value.SerializeToString()
        elif isinstance(value, ContainerState):
            value = value.value
        elif isinstance(value, ProcessUser):
            value = json.dumps(dataclasses.asdict(value))
        values[column.name] = value
    return values


def upsert_sql(record: ContainerRecord) -> tuple[str, dict[str, Any]]:
    values = to_row(record)
    names = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    return f"INSERT OR REPLACE INTO containers ({names}) VALUES ({marks})", values


def from_row(row: Any) -> ContainerRecord:
    values = dict(row)
    for column, message in _PROTO_COLUMNS.items():
        if values[column] is not None:
            values[column] = message.FromString(values[column])
    values["state"] = ContainerState(values["state"])
    user = json.loads(values["user"] or "{}")
    values["user"] = ProcessUser(user.get("uid", 0), user.get("gid", 0), tuple(user.get("additional_gids", ())))
    return ContainerRecord(**values)


def to_plan(record: ContainerRecord) -> dict[str, Any]:
    """The record as an intent's plan: CreateContainer's rootfs, bundle, lease, runtime container
    and conmon are all named by its id, handler and paths."""
    plan = to_row(record)
    for column in _PROTO_COLUMNS:
        if plan[column] is not None:
            plan[column] = plan[column].hex()
    return plan


def from_plan(plan: dict[str, Any]) -> ContainerRecord:
    row = dict(plan)
    for column in _PROTO_COLUMNS:
        if row[column] is not None:
            row[column] = bytes.fromhex(row[column])
    return from_row(row)

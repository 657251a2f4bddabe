"""Container records as CRI messages: status, list entries, verbose info, filters."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from pycri.api import api_pb2
from pycri.container.signals import signal_enum
from pycri.state.containers import ContainerRecord, ContainerState


def container_entry(record: ContainerRecord) -> api_pb2.Container:
    return api_pb2.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        metadata=record.config.metadata,
        image=api_pb2.ImageSpec(image=record.image_ref),
        image_ref=record.image_id,
        image_id=record.image_id,
        state=record.state.proto,
        created_at=record.created_at,
        labels=record.config.labels,
        annotations=record.config.annotations,
    )


def container_status(record: ContainerRecord) -> api_pb2.ContainerStatus:
    status = api_pb2.ContainerStatus(
        id=record.id,
        metadata=record.config.metadata,
        state=record.state.proto,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        image=api_pb2.ImageSpec(image=record.image_ref),
        image_ref=record.image_id,
        image_id=record.image_id,
        reason=record.reason,
        message=record.message,
        labels=record.config.labels,
        annotations=record.config.annotations,
        mounts=record.config.mounts,
        log_path=record.log_path,
        stop_signal=api_pb2.Signal.Name(signal_enum(record.stop_signal)),
    )
    status.resources.linux.CopyFrom(record.resources or record.config.linux.resources)
    linux_user = status.user.linux
    linux_user.uid, linux_user.gid = record.user.uid, record.user.gid
    linux_user.supplemental_groups.extend(record.user.additional_gids)
    return status


def verbose_info(record: ContainerRecord, spec_path: Path) -> dict[str, str]:
    try:
        spec = json.loads(spec_path.read_text())
    except FileNotFoundError:
        spec = None
    info = {
        "sandboxID": record.sandbox_id,
        "pid": record.pid if record.state is ContainerState.RUNNING else 0,
        "runtimeHandler": record.runtime_handler,
        "cgroupsPath": record.cgroups_path,
        "config": MessageToDict(record.config),
        "runtimeSpec": spec,
    }
    return {"info": json.dumps(info)}


def no_record_filter(wanted: api_pb2.ContainerFilter) -> bool:
    """No state, pod or label part: `matches` holds for every record."""
    return not (wanted.HasField("state") or wanted.pod_sandbox_id or wanted.label_selector)


def matches(record: ContainerRecord, wanted: api_pb2.ContainerFilter) -> bool:
    """ListContainers' filter: state, pod (id or prefix) and labels; the id is resolved by the caller."""
    if wanted.HasField("state") and record.state.proto != wanted.state.state:
        return False
    if wanted.pod_sandbox_id and not record.sandbox_id.startswith(wanted.pod_sandbox_id):
        return False
    return all(record.config.labels.get(key) == value for key, value in wanted.label_selector.items())

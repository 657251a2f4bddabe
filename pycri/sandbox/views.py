"""Sandbox records as CRI messages: status, list entries, verbose info, list filters."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from pycri.api import api_pb2
from pycri.network.netns import is_namespace_pinned
from pycri.state.sandboxes import SandboxRecord


def sandbox_status(record: SandboxRecord) -> api_pb2.PodSandboxStatus:
    network = api_pb2.PodSandboxNetworkStatus()
    if record.ips:
        network.ip = record.ips[0]
        network.additional_ips.extend(api_pb2.PodIP(ip=ip) for ip in record.ips[1:])
    status = api_pb2.PodSandboxStatus(
        id=record.id,
        metadata=record.metadata,
        state=record.state.proto,
        created_at=record.created_at,
        network=network,
        labels=record.config.labels,
        annotations=record.config.annotations,
        runtime_handler=record.runtime_handler,
    )
    status.linux.namespaces.options.CopyFrom(record.namespace_options)
    return status


def sandbox_summary(record: SandboxRecord) -> api_pb2.PodSandbox:
    return api_pb2.PodSandbox(
        id=record.id,
        metadata=record.metadata,
        state=record.state.proto,
        created_at=record.created_at,
        labels=record.config.labels,
        annotations=record.config.annotations,
        runtime_handler=record.runtime_handler,
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def verbose_info(record: SandboxRecord) -> dict[str, str]:
    """PodSandboxStatus' verbose info: one JSON document under "info", as containerd gives."""
    info = {
        "pid": record.pause_pid or 0,
        "runtimeHandler": record.runtime_handler,
        "cgroupParent": record.cgroup_parent,
        "netNamespacePath": _text(record.netns_path),
        "netNamespaceClosed": record.netns_path is not None and not is_namespace_pinned(record.netns_path),
        "ipcNamespacePath": _text(record.ipc_path),
        "utsNamespacePath": _text(record.uts_path),
        "shmPath": _text(record.shm_path),
        "hostnamePath": str(record.hostname_path),
        "hostsPath": str(record.hosts_path),
        "resolvConfPath": str(record.resolv_conf_path),
        "logDirectory": record.log_directory,
        "config": MessageToDict(record.config, preserving_proto_field_name=True),
        "cniResult": record.cni_result,
    }
    return {"info": json.dumps(info)}


def no_record_filter(sandbox_filter: api_pb2.PodSandboxFilter) -> bool:
    """No state or label part: `matches` holds for every record."""
    return not (sandbox_filter.HasField("state") or sandbox_filter.label_selector)


def matches(record: SandboxRecord, sandbox_filter: api_pb2.PodSandboxFilter) -> bool:
    """State and label parts of a ListPodSandbox filter (the id part is resolved by the service)."""
    if sandbox_filter.HasField("state") and sandbox_filter.state.state != record.state.proto:
        return False
    labels = record.config.labels
    return all(labels.get(key) == value for key, value in sandbox_filter.label_selector.items())

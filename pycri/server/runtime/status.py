"""Status: is the runtime ready, is the pod network ready, and why not."""

import dataclasses
import json

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.health import Condition, network_condition, runtime_condition


def _proto(condition: Condition) -> api_pb2.RuntimeCondition:
    return api_pb2.RuntimeCondition(
        type=condition.type, status=condition.ready, reason=condition.reason, message=condition.message
    )


async def handle(daemon: Daemon, request: api_pb2.StatusRequest) -> api_pb2.StatusResponse:
    conditions = [runtime_condition(daemon.config), await network_condition(daemon)]
    reply = api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=[_proto(c) for c in conditions]))
    default = daemon.config.runtime.default_handler
    for name in ["", *daemon.config.runtime.handlers]:  # "" is how kubelet names the default handler
        reply.runtime_handlers.add(name=name, features=daemon.handler_features.get(name or default))
    reply.features.supplemental_groups_policy = True
    reply.features.mount_options = True  # Mount.mount_options: noexec, nodev, nosuid (spec_mounts.py)
    if request.verbose:
        reply.info["config"] = json.dumps(dataclasses.asdict(daemon.config), default=str)
        reply.info["hostInfo"] = daemon.host_info().to_json()
        reply.info["podCIDR"] = json.dumps(daemon.network.pod_cidr)
        reply.info["apparmor"] = json.dumps(daemon.apparmor)
    return reply

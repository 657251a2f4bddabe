"""The two conditions kubelet waits for: RuntimeReady and NetworkReady."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pycri.config import Config
from pycri.hostinfo import is_executable
from pycri.network.cni import CniNotReady

if TYPE_CHECKING:
    from pycri.daemon import Daemon

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(frozen=True)
class Condition:
    type: str
    ready: bool
    reason: str = ""
    message: str = ""


def runtime_condition(config: Config) -> Condition:
    handler = config.handler(config.runtime.default_handler)
    if not is_executable(handler.path):
        return Condition(
            RUNTIME_READY,
            False,
            "RuntimeBinaryMissing",
            f"OCI runtime {config.runtime.default_handler!r} not found: {handler.path} is not an executable file",
        )
    if not is_executable(config.runtime.conmon):
        message = f"conmon not found: {config.runtime.conmon} is not an executable file"
        return Condition(RUNTIME_READY, False, "ConmonMissing", message)
    if not os.access(config.state_dir, os.W_OK):
        return Condition(RUNTIME_READY, False, "StateDirNotWritable", f"cannot write to {config.state_dir}")
    return Condition(RUNTIME_READY, True)


async def network_condition(daemon: Daemon) -> Condition:
    try:
        await daemon.network.status()
    except CniNotReady as exc:
        return Condition(NETWORK_READY, False, "NetworkPluginNotReady", f"CNI network not ready: {exc}")
    return Condition(NETWORK_READY, True)

"""Named kill points: places in a mutating operation where a test may have pycri die.

A fault test starts the daemon with PYCRI_KILL_POINT=<name>; when the operation reaches
that point the daemon sends itself SIGKILL, exactly as a crash or an OOM kill would.
Unarmed, a kill point costs one dict lookup. Every name a test may arm is listed in
KILL_POINTS, in the order its operation passes it, so the fault suite covers them all.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "PYCRI_KILL_POINT"

KILL_POINTS: tuple[str, ...] = (
    "run_pod_sandbox.intent",  # the intent is durable, nothing is made yet
    "run_pod_sandbox.host_side",  # dirs, namespace pins, /dev/shm and files made
    "run_pod_sandbox.network",  # CNI ADD done
    "run_pod_sandbox.pause",  # the pause process runs (pods that share a PID namespace)
    "run_pod_sandbox.committed",  # the row is written, the reply not yet sent
    "create_container.intent",
    "create_container.rootfs",  # dirs, snapshot lease and the overlay rootfs mount made
    "create_container.bundle",  # config.json written
    "create_container.runtime",  # conmon and `runc create` done
    "create_container.committed",
    "start_container.intent",
    "start_container.started",  # `runc start` returned, the new state not yet persisted
    "stop_container.signalled",  # the stop signal is sent
    "remove_container.intent",
    "remove_container.runtime",  # `runc delete` done, files still there
    "checkpoint_container.paused",  # the container is frozen for CRIU, its staging dir made
    "stop_pod_sandbox.intent",
    "stop_pod_sandbox.containers",  # the pod's containers are stopped
    "stop_pod_sandbox.network",  # CNI DEL done
    "remove_pod_sandbox.intent",
    "remove_pod_sandbox.containers",  # the pod's containers are removed
    "pull_image.layer",  # a layer is being unpacked
    "pull_image.committed",
    "remove_image.intent",
)

_armed = os.environ.get(ENV_VAR, "")


def kill_point(name: str) -> None:
    """Die here, at once and without cleanup, when a test armed `name`."""
    if _armed and name == _armed:
        os.kill(os.getpid(), signal.SIGKILL)

"""pycri killed (SIGKILL) while a container is paused for CheckpointContainer: after a restart the
container runs again (a frozen container is never left behind), the checkpoint's staging dir
and partial archive are gone, no archive claims to be written, and once everything is removed
through CRI the host holds nothing more than before; the same call then works (or, where CRIU
is unusable, is refused as before).

The kill point lies after `runc pause` and before CRIU is asked to dump, so only CRIU's probe
(`criu check`) stands between the call and it. On a host where that probe fails, the daemon
gets a `criu` first on its PATH that answers `check` with success and hands everything else
to the real criu: the pause, the crash and the recovery are the real ones either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from pycri.container.checkpoint_criu import probe_criu
from pycri.faults import ENV_VAR
from tests.support.busybox_images import TestImages
from tests.support.fault_node import FaultNode, fault_node
from tests.support.leaks import take, wait_for_no_leaks
from tests.support.pods import RUNNING, SLEEP_FOREVER, container_config

pytestmark = pytest.mark.integration

POINT = "checkpoint_container.paused"


def arm_with_criu_probe_passing(fault: FaultNode, shim_dir: Path) -> None:
    """Restart the daemon with the kill point armed and, where `criu check` fails here, a criu
    whose `check` passes (see the module docstring)."""
    env = {ENV_VAR: POINT}
    if not asyncio.run(probe_criu()).usable:
        real = shutil.which("criu")
        assert real is not None, "criu is not installed (Debian package criu)"
        shim = shim_dir / "criu"
        shim.write_text(f'#!/bin/sh\n[ "$1" = check ] && exit 0\nexec {real} "$@"\n')
        shim.chmod(0o755)
        env["PATH"] = f"{shim_dir}:{os.environ['PATH']}"
    fault.daemon.stop()
    fault.daemon.env = env
    try:
        fault.daemon.start()
    finally:
        fault.daemon.env = {}
    fault.armed = POINT
    fault.work.reconnect()


def runc_status(fault: FaultNode, container_id: str) -> str:
    root = fault.scope.config.handler_root("runc")
    state = subprocess.run(["runc", "--root", str(root), "state", container_id], capture_output=True, check=True)
    return str(json.loads(state.stdout)["status"])


def test_killed_while_paused_for_a_checkpoint(test_images: TestImages, tmp_path: Path) -> None:
    archives, shim_dir = tmp_path / "archives", tmp_path / "bin"
    archives.mkdir()
    shim_dir.mkdir()
    with fault_node(test_images) as fault:
        fault.pull_images()
        baseline = take(fault.daemon)
        pod = fault.work.pod("faulted")
        container_id = fault.work.run(pod, container_config("sleeper", test_images.busybox.reference, *SLEEP_FOREVER))
        fault.work.wait_for_state(container_id, RUNNING)
        layers = fault.scope.config.root_dir / "containers" / container_id

        arm_with_criu_probe_passing(fault, shim_dir)
        request = api_pb2.CheckpointContainerRequest(container_id=container_id, location=str(archives / "app.tar"))
        fault.kill_during(POINT, lambda: fault.work.runtime.CheckpointContainer(request, timeout=60))
        assert runc_status(fault, container_id) == "paused", "the crash did not come while the container was frozen"
        assert list(layers.glob("checkpoint-*")) != [], "the staging dir was not made before the pause"

        fault.restart_unarmed()
        assert runc_status(fault, container_id) == "running"
        assert fault.work.status(container_id).state == RUNNING
        assert fault.work.output(container_id, "echo", "alive") == "alive\n"  # a frozen process answers nothing
        assert list(layers.glob("checkpoint-*")) == [] and list(archives.iterdir()) == []

        # The same call again, with the host's own criu: no leftover stands in its way.
        try:
            fault.work.runtime.CheckpointContainer(request, timeout=120)
        except grpc.RpcError as error:
            assert (error.code(), asyncio.run(probe_criu()).usable) == (grpc.StatusCode.FAILED_PRECONDITION, False)
            assert list(archives.iterdir()) == []
        else:
            assert [path.name for path in archives.iterdir()] == ["app.tar"]
        assert fault.work.status(container_id).state == RUNNING

        fault.remove_everything()
        wait_for_no_leaks(fault.daemon, baseline)

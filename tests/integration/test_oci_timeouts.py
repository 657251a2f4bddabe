"""Runtime calls and conmon's create that outlast their timeout are killed with what they
started, reaped, and reported as RuntimeTimeout. The "runtime" here is a small script that
hangs on the named subcommand (a real process tree: the script and its sleep) and hands
everything else to runc."""

import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from pycri.oci import conmon
from pycri.oci.driver import ContainerCreate, ContainerRuntime, RuntimeTimeouts
from pycri.oci.runtime import ExecSpec, ExecTimeoutError, RuntimeTimeout
from pycri.process_exit import wait_for_exit
from tests.integration.test_oci_runtime import RUNTIMES, container_runtime, make_bundle, process_running

RUNC = RUNTIMES["runc"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not conmon.DEFAULT_CONMON_PATH.exists(), reason="conmon not installed"),
    pytest.mark.skipif(not RUNC.exists(), reason="runc not installed"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static not installed"),
]


def hanging_runtime(directory: Path, hang_on: str) -> tuple[Path, Path]:
    """A runtime that sleeps (in a child it waits for) when its arguments hold `hang_on`
    ("*" for every call) and runs runc otherwise; it records its pids in the second path."""
    script, pids = directory / f"hang-on-{hang_on.strip('*') or 'all'}", directory / "pids"
    script.write_text(
        f"#!/bin/sh\necho $$ >> {pids}\n"
        f'for arg in "$@"; do case "$arg" in {hang_on}) sleep 600 & echo $! >> {pids}; wait; exit 1;; esac; done\n'
        f'exec {RUNC} "$@"\n'
    )
    script.chmod(0o755)
    return script, pids


def recorded_pids(pids: Path) -> list[int]:
    return [int(pid) for pid in pids.read_text().split()]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda runtime: runtime.state("c1"), "state c1"),
        (lambda runtime: runtime.start("c1"), "start c1"),
        (lambda runtime: runtime.kill("c1", signal.SIGTERM), "kill c1"),
        (lambda runtime: runtime.delete("c1", force=True), "delete c1"),
        (lambda runtime: runtime.update("c1", {"pids": {"limit": 5}}), "update c1"),
        (lambda runtime: runtime.features(), "features"),
    ],
)
async def test_a_runtime_call_past_its_timeout_is_killed_with_its_children(
    tmp_path: Path, call: Callable[[ContainerRuntime], Awaitable[object]], words: str
) -> None:
    script, pids = hanging_runtime(tmp_path, "*")
    runtime = container_runtime("slow", script, tmp_path, RuntimeTimeouts(call=0.5, conmon_create=120.0))

    with pytest.raises(RuntimeTimeout, match=f"^slow {words}: no answer within 0.5s") as raised:
        await call(runtime)

    assert raised.value.detail == "timeout"
    started = recorded_pids(pids)
    assert len(started) == 2  # the script and its sleep
    assert not any(process_running(pid) for pid in started)


async def test_conmon_create_past_its_timeout_leaves_nothing(tmp_path: Path) -> None:
    script, pids = hanging_runtime(tmp_path, "create")
    runtime = container_runtime("slow", script, tmp_path, RuntimeTimeouts(call=60.0, conmon_create=1.0))
    container_id = f"hung-{secrets.token_hex(8)}"
    bundle = make_bundle(tmp_path / "bundles" / container_id, ["/bin/true"], f"/pycri-test-{container_id}")
    log_path = tmp_path / "logs" / "hung.log"

    with pytest.raises(RuntimeTimeout, match=f"^slow create {container_id}: no report from conmon within 1.0s"):
        await runtime.create(ContainerCreate(container_id, "hung", bundle, log_path))

    assert not any(process_running(pid) for pid in recorded_pids(pids))
    assert not [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if container_id in " ".join(proc.info["cmdline"] or []) and process_running(proc.pid)
    ]
    assert await runtime.state(container_id) is None
    assert not (runtime.exit_dir / container_id).exists()
    assert not os.path.lexists(runtime.socket_dir / container_id)
    assert not (bundle / conmon.CONMON_PIDFILE).exists()
    assert not log_path.exists()


async def test_exec_that_does_not_start_in_time_is_killed(tmp_path: Path) -> None:
    runtime = container_runtime("runc", RUNC, tmp_path)
    container_id = f"execd-{secrets.token_hex(8)}"
    cgroups_path = f"/pycri-test-{container_id}"
    bundle = make_bundle(tmp_path / "bundles" / container_id, ["/bin/sleep", "1000"], cgroups_path)
    created = await runtime.create(ContainerCreate(container_id, "execd", bundle, tmp_path / "execd.log"))
    try:
        await runtime.start(container_id)
        script, pids = hanging_runtime(tmp_path, "exec")
        slow = container_runtime("slow", script, tmp_path, RuntimeTimeouts(call=0.5, conmon_create=120.0))

        with pytest.raises(RuntimeTimeout, match=f"^slow exec {container_id}: the process did not start within 0.5s"):
            await slow.exec_sync(container_id, ExecSpec(["/bin/true"]), timeout=30)
        with pytest.raises(ExecTimeoutError):  # the exec timeout, shorter, still wins
            await slow.exec_sync(container_id, ExecSpec(["/bin/true"]), timeout=0.2)

        assert not any(process_running(pid) for pid in recorded_pids(pids))
        assert process_running(created.container_pid)
    finally:
        await runtime.delete(container_id, force=True)
        await wait_for_exit(created.conmon_pid, 10, kill_after=True)
        runtime.remove_conmon_files(container_id)

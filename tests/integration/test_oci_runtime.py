"""ContainerRuntime on runc and crun under conmon: create, start, logs, exit files, kill, delete,
exec, update, stats."""

import asyncio
import functools
import json
import os
import re
import secrets
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from pycri.cgroups import CgroupManager, host_layout, make_cgroup_manager
from pycri.oci import conmon
from pycri.oci.conmon import ConmonProcess, ContainerCreateError, ExitInfo
from pycri.oci.driver import ContainerCreate, ContainerRuntime, RuntimeTimeouts
from pycri.oci.runtime import (
    ContainerNotFoundError,
    ContainerStatus,
    ExecSpec,
    ExecTimeoutError,
    RuntimeHandler,
)
from pycri.process_exit import wait_for_exit

RUNTIMES = {"runc": Path("/usr/sbin/runc"), "crun": Path("/usr/bin/crun")}
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat", "true", "dd", "pwd")
LOG_LINE = re.compile(r"^(?P<time>\S+) (?P<stream>stdout|stderr) (?P<tag>[FP]) (?P<text>.*)$")
WAIT_LIMIT_SECONDS = 30.0
TIMEOUTS = RuntimeTimeouts(call=60.0, conmon_create=120.0)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not conmon.DEFAULT_CONMON_PATH.exists(), reason="conmon not installed"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static not installed"),
]

T = TypeVar("T")


async def eventually(probe: Callable[[], T | None], what: str) -> T:
    """Poll until `probe` returns a value; the limit only stops a broken test from hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT_SECONDS
    while (value := probe()) is None or value is False:
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def process_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_bundle(directory: Path, args: list[str], cgroups_path: str, terminal: bool = False, cwd: str = "/") -> Path:
    rootfs = directory / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "GREETING=from-spec"],
            "cwd": cwd,
            "capabilities": {kind: ["CAP_KILL"] for kind in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "bundle",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["newinstance", "ptmxmode=0666"],
            },
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")],
        },
    }
    (directory / "config.json").write_text(json.dumps(spec))
    return directory


def container_runtime(name: str, path: Path, base: Path, timeouts: RuntimeTimeouts = TIMEOUTS) -> ContainerRuntime:
    handler = RuntimeHandler(name=name, path=path, root=base / "runtime-root")
    return ContainerRuntime(handler, conmon.DEFAULT_CONMON_PATH, base / "exits", base / "sockets", timeouts)


@dataclass
class Host:
    """A runtime with its state dirs in a temp dir, and everything the test created."""

    runtime: ContainerRuntime
    base: Path
    cgroup_parent: str
    cgroups: CgroupManager
    created: list[tuple[str, int]] = field(default_factory=list)  # (container id, conmon pid)

    def request(self, name: str, args: list[str], **options: Any) -> ContainerCreate:
        container_id = f"{name}-{secrets.token_hex(8)}"
        cwd = options.pop("cwd", "/")
        bundle = make_bundle(
            self.base / "bundles" / container_id,
            args,
            f"{self.cgroup_parent}/{name}",
            terminal=options.get("tty", False),
            cwd=cwd,
        )
        return ContainerCreate(
            container_id=container_id,
            name=name,
            bundle=bundle,
            log_path=self.base / "logs" / f"{name}.log",
            **options,
        )

    async def create(self, req: ContainerCreate) -> ConmonProcess:
        created = await self.runtime.create(req)
        self.created.append((req.container_id, created.conmon_pid))
        return created

    async def run(self, name: str, args: list[str], **options: Any) -> tuple[ContainerCreate, ConmonProcess]:
        req = self.request(name, args, **options)
        created = await self.create(req)
        await self.runtime.start(req.container_id)
        return req, created

    async def exited(self, req: ContainerCreate) -> ExitInfo:
        return await eventually(lambda: self.runtime.read_exit(req.container_id, req.bundle), "the exit file")

    def cgroup_dir(self, name: str, controller: str) -> Path:
        layout = host_layout()
        mount = layout.unified or layout.v1[controller]
        return mount / f"{self.cgroup_parent}/{name}".lstrip("/")


@pytest.fixture(params=sorted(RUNTIMES))
async def host(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Host]:
    path = RUNTIMES[request.param]
    if not path.exists():
        pytest.skip(f"{request.param} not installed")
    if request.param == "crun" and hybrid_v2_has_controllers():
        pytest.skip("crun refuses hybrid cgroups while the v2 hierarchy holds controllers (`crun create` fails)")
    cgroup_parent = f"/pycri-test-{secrets.token_hex(4)}"
    manager = make_cgroup_manager("cgroupfs", cgroup_parent, "pod")
    test_host = Host(container_runtime(request.param, path, tmp_path), tmp_path, cgroup_parent, manager)
    yield test_host
    for container_id, conmon_pid in test_host.created:
        await test_host.runtime.delete(container_id, force=True)
        await wait_for_exit(conmon_pid, 10, kill_after=True)
        test_host.runtime.remove_conmon_files(container_id)
    await manager.remove(cgroup_parent)


def hybrid_v2_has_controllers() -> bool:
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    return host_layout().unified is None and controllers.exists() and bool(controllers.read_text().split())


def log_entries(path: Path) -> list[tuple[str, str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        match = LOG_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        assert datetime.fromisoformat(match["time"]).tzinfo is not None
        entries.append((match["stream"], match["tag"], match["text"]))
    return entries


async def test_create_start_log_and_exit_code(host: Host) -> None:
    req = host.request("hello", ["/bin/sh", "-c", "echo hello; echo err >&2; exit 3"])
    created = await host.create(req)

    state = await host.runtime.state(req.container_id)
    assert state is not None
    assert state.status == ContainerStatus.CREATED
    assert state.pid == created.container_pid
    assert state.bundle == req.bundle
    assert process_running(created.conmon_pid)
    assert host.runtime.read_exit(req.container_id, req.bundle) is None
    assert host.runtime.attach_socket(req.container_id).is_socket()
    assert conmon.read_conmon_process(req.bundle) == created

    await host.runtime.start(req.container_id)
    exit_info = await host.exited(req)

    assert exit_info.code == 3
    assert not exit_info.oom_killed
    assert exit_info.finished_at_ns > 0
    entries = log_entries(req.log_path)
    assert ("stdout", "F", "hello") in entries
    assert ("stderr", "F", "err") in entries
    state = await host.runtime.state(req.container_id)
    assert state is not None and state.status == ContainerStatus.STOPPED
    await eventually(lambda: not process_running(created.conmon_pid), "conmon to exit")


async def test_delete_is_idempotent_and_state_of_missing_is_none(host: Host) -> None:
    req, _ = await host.run("done", ["/bin/true"])
    await host.exited(req)

    await host.runtime.delete(req.container_id)
    await host.runtime.delete(req.container_id)
    await host.runtime.delete(req.container_id, force=True)

    assert await host.runtime.state(req.container_id) is None
    assert req.container_id not in [state.id for state in await host.runtime.list_containers()]


async def test_sigterm_stops_a_container_that_handles_it(host: Host) -> None:
    req, _ = await host.run("trapper", ["/bin/sh", "-c", "trap 'exit 143' TERM; sleep 1000 & wait"])
    await eventually(lambda: len(host_pids(host, "trapper")) == 2 or None, "sleep to start")

    await host.runtime.kill(req.container_id, signal.SIGTERM)

    assert (await host.exited(req)).code == 143


async def test_sigkill_stops_sleep_and_kill_after_exit_is_quiet(host: Host) -> None:
    # A plain `sleep` as PID 1 of its namespace ignores SIGTERM; SIGKILL always works.
    req, created = await host.run("sleeper", ["/bin/sleep", "1000"])
    state = await host.runtime.state(req.container_id)
    assert state is not None and state.status == ContainerStatus.RUNNING

    await host.runtime.kill(req.container_id, signal.SIGKILL)

    assert (await host.exited(req)).code == 128 + signal.SIGKILL
    assert not process_running(created.container_pid)
    await host.runtime.kill(req.container_id, signal.SIGTERM)


async def test_exec_sync_returns_output_and_exit_code(host: Host) -> None:
    req, _ = await host.run("execd", ["/bin/sleep", "1000"])

    result = await host.runtime.exec_sync(
        req.container_id, ExecSpec(["/bin/sh", "-c", "echo out $GREETING; echo err >&2; exit 7"]), timeout=30
    )
    overridden = await host.runtime.exec_sync(
        req.container_id,
        ExecSpec(["/bin/sh", "-c", "echo $GREETING; pwd"], env=["GREETING=hi"], cwd="/bin"),
        timeout=None,
    )

    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out from-spec\n", b"err\n")
    assert overridden.stdout == b"hi\n/bin\n"


async def test_exec_sync_failure_to_start_raises(host: Host) -> None:
    req, _ = await host.run("execfail", ["/bin/sleep", "1000"])

    with pytest.raises(Exception, match="nope") as raised:
        await host.runtime.exec_sync(req.container_id, ExecSpec(["/bin/nope"]), timeout=30)
    with pytest.raises(ContainerNotFoundError):
        await host.runtime.exec_sync("no-such-container", ExecSpec(["/bin/true"]), timeout=None)

    assert not isinstance(raised.value, ExecTimeoutError)


@pytest.mark.parametrize("ending", ["timeout", "cancel"])
async def test_exec_sync_timeout_or_cancel_kills_the_exec_process_group(host: Host, ending: str) -> None:
    req, created = await host.run("slowexec", ["/bin/sleep", "1000"])
    exec_task = asyncio.ensure_future(
        host.runtime.exec_sync(
            req.container_id,
            ExecSpec(["/bin/sh", "-c", "sleep 1001; echo late"]),
            timeout=1 if ending == "timeout" else None,
        )
    )

    def exec_pids() -> list[int] | None:
        pids = [pid for pid in host_pids(host, "slowexec") if pid != created.container_pid]
        return pids if len(pids) == 2 else None

    started = await eventually(exec_pids, "the exec'd sh and its sleep")

    if ending == "cancel":
        exec_task.cancel()
    with pytest.raises(ExecTimeoutError if ending == "timeout" else asyncio.CancelledError):
        await exec_task

    assert not any(process_running(pid) for pid in started)
    assert process_running(created.container_pid)


async def test_create_failure_reports_cause_and_leaves_nothing(host: Host) -> None:
    for args, cwd, cause in ((["/bin/nope"], "/", "/bin/nope"), (["/bin/true"], "/bin/busybox", "not a directory")):
        req = host.request("broken", args, cwd=cwd)

        with pytest.raises(ContainerCreateError, match=cause):
            await host.create(req)

        assert await host.runtime.state(req.container_id) is None
        assert not (host.runtime.handler.root / req.container_id).exists()
        assert not [proc for proc in psutil.process_iter(["cmdline"]) if req.container_id in " ".join(
            proc.info["cmdline"] or []) and process_running(proc.pid)]  # fmt: skip
        assert not os.path.lexists(host.runtime.socket_dir / req.container_id)
        assert not (host.runtime.exit_dir / req.container_id).exists()
        assert not (req.bundle / conmon.CONMON_PIDFILE).exists()
        assert not req.log_path.exists()
        assert not host.cgroup_dir("broken", "memory").exists()


async def test_update_memory_limit(host: Host) -> None:
    req, _ = await host.run("limited", ["/bin/sleep", "1000"])
    limit = 96 * 1024 * 1024

    await host.runtime.update(req.container_id, {"memory": {"limit": limit, "swap": limit}})

    limit_file = "memory.max" if host_layout().unified else "memory.limit_in_bytes"
    assert int((host.cgroup_dir("limited", "memory") / limit_file).read_text()) == limit
    assert host.cgroups.read_stats(f"{host.cgroup_parent}/limited").memory_limit == limit


async def test_read_stats_of_running_container(host: Host) -> None:
    req, _ = await host.run("busy", ["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"])
    await eventually(lambda: any(p.name() == "sleep" for p in map(psutil.Process, host_pids(host, "busy"))), "sleep")

    stats = host.cgroups.read_stats(f"{host.cgroup_parent}/busy")
    pod_stats = host.cgroups.read_stats(host.cgroup_parent)

    assert stats.cpu_usage_ns > 0
    assert stats.memory_usage > 0
    assert 0 < stats.memory_working_set <= stats.memory_usage
    assert stats.page_faults > 0
    assert stats.pids == 1
    assert pod_stats.cpu_usage_ns >= stats.cpu_usage_ns
    assert host.cgroups.exists(f"{host.cgroup_parent}/busy")


async def test_oom_kill_is_recorded(host: Host) -> None:
    req = host.request("hungry", ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"])
    spec = json.loads((req.bundle / "config.json").read_text())
    limit = 16 * 1024 * 1024
    spec["linux"]["resources"]["memory"] = {"limit": limit, "swap": limit}
    (req.bundle / "config.json").write_text(json.dumps(spec))
    await host.create(req)
    await host.runtime.start(req.container_id)

    exit_info = await host.exited(req)

    assert exit_info.code == 128 + signal.SIGKILL
    assert exit_info.oom_killed


async def test_reopen_log_after_rotation(host: Host) -> None:
    req, _ = await host.run("chatty", ["/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"])
    await eventually(lambda: req.log_path.exists() and req.log_path.stat().st_size > 0 or None, "first lines")
    rotated = req.log_path.with_name("chatty.log.1")
    req.log_path.rename(rotated)

    host.runtime.reopen_log(req.bundle)

    await eventually(lambda: req.log_path.exists() and req.log_path.stat().st_size > 0 or None, "a new log file")
    assert set(log_entries(req.log_path)) == {("stdout", "F", "tick")}
    assert ("stdout", "F", "tick") in log_entries(rotated)


async def test_terminal_output_reaches_the_log(host: Host) -> None:
    req, _ = await host.run("tty", ["/bin/sh", "-c", "echo on-a-tty; [ -t 1 ] && echo is-a-tty"], tty=True)

    assert (await host.exited(req)).code == 0
    texts = [text.rstrip("\r") for stream, _, text in log_entries(req.log_path) if stream == "stdout"]
    assert texts == ["on-a-tty", "is-a-tty"]


async def test_conmon_is_placed_before_it_starts_the_runtime(host: Host) -> None:
    conmon_cgroup = f"{host.cgroup_parent}/conmon-watched"
    place = functools.partial(host.cgroups.place_conmon, host.cgroup_parent, "watched")
    req, created = await host.run("watched", ["/bin/sleep", "1000"], place_conmon=place)

    memberships = Path(f"/proc/{created.conmon_pid}/cgroup").read_text().splitlines()
    assert any(line.endswith(f":{conmon_cgroup}") for line in memberships)

    await host.runtime.kill(req.container_id, signal.SIGKILL)
    await host.exited(req)
    await eventually(lambda: not process_running(created.conmon_pid), "conmon to exit")


@pytest.mark.parametrize("name", sorted(RUNTIMES))
async def test_calls_that_need_no_container(name: str, tmp_path: Path) -> None:
    if not RUNTIMES[name].exists():
        pytest.skip(f"{name} not installed")
    runtime = container_runtime(name, RUNTIMES[name], tmp_path)

    version = await runtime.version()
    features = await runtime.features()

    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", version)
    if name == "runc":
        assert features is not None and "ociVersionMax" in features
    assert await runtime.state("missing") is None
    assert await runtime.list_containers() == []
    await runtime.delete("missing")
    await runtime.delete("missing", force=True)
    for call in (runtime.start, lambda container_id: runtime.kill(container_id, signal.SIGTERM)):
        with pytest.raises(ContainerNotFoundError):
            await call("missing")


def host_pids(host: Host, name: str) -> list[int]:
    procs = host.cgroup_dir(name, "pids") / "cgroup.procs"
    return [int(pid) for pid in procs.read_text().split()] if procs.exists() else []

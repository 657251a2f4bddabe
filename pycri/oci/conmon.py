"""Driver for conmon (2.1.x, the monitor CRI-O uses): one per container.

conmon runs `<runtime> create`, holds the container's stdio, writes the CRI log
file (`<RFC3339Nano> stdout|stderr F|P <line>`), writes the exit code to
<exit_dir>/<id> and <persist_dir>/exit, touches <persist_dir>/oom on an OOM kill,
and serves the attach socket <bundle>/attach (also reachable through the short
link <socket_dir>/<id>). It double-forks, so it outlives pycri.

Protocol (conmon's `_OCI_SYNCPIPE` / `_OCI_STARTPIPE`): conmon blocks on the start
pipe until pycri has placed it in its cgroup, then reports one JSON line on the
sync pipe: {"data": <container pid>} or {"data": -1, "message": <runtime stderr>}.
No report within the create timeout: conmon and what it started are killed.
The ctl fifo <bundle>/ctl takes "<type> <height> <width>\\n" lines: type 1 resizes
the terminal, type 2 reopens the log file (what kubelet's ReopenContainerLog needs).
"""

import asyncio
import errno
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from pycri.oci.runtime import (
    DEFAULT_CALL_TIMEOUT,
    OciRuntime,
    OciRuntimeError,
    RuntimeHandler,
    RuntimeTimeout,
    last_error_line,
)
from pycri.process_exit import exit_status, kill_pidfds, open_pidfds

log = logging.getLogger(__name__)

DEFAULT_CONMON_PATH = Path("/usr/bin/conmon")
CONMON_PIDFILE = "conmon.pid"
CONTAINER_PIDFILE = "container.pid"
OOM_FILE = "oom"
CTL_RESIZE_TERMINAL = 1
CTL_REOPEN_LOG = 2


class ContainerCreateError(OciRuntimeError):
    pass


@dataclass(frozen=True)
class ConmonCreate:
    container_id: str
    name: str
    bundle: Path
    runtime: RuntimeHandler
    log_path: Path
    exit_dir: Path
    persist_dir: Path  # per container: conmon and container pidfiles, "exit", "oom"
    socket_dir: Path  # holds <id> -> bundle links so attach socket paths stay short
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    log_size_max: int | None = None
    # Called (in a thread) with conmon's pid before conmon may start the runtime: moves it
    # into its cgroup. None leaves conmon in pycri's cgroup.
    place_conmon: Callable[[int], None] | None = None
    conmon_path: Path = DEFAULT_CONMON_PATH
    # Seconds from starting conmon to its report.
    create_timeout: float = 120.0
    # Seconds for each runtime call that cleans up after a failed create.
    runtime_call_timeout: float = DEFAULT_CALL_TIMEOUT
    # CRIU's images to restore the container from (`<runtime> restore`, running at once) instead of creating it.
    restore_from: Path | None = None


@dataclass(frozen=True)
class ConmonProcess:
    conmon_pid: int
    container_pid: int


@dataclass(frozen=True)
class ExitInfo:
    code: int  # 128+N when killed by signal N; -1 when conmon could not tell
    finished_at_ns: int
    oom_killed: bool


def conmon_args(req: ConmonCreate) -> list[str]:
    runtime_args = [f"--root={req.runtime.root}", "--log-format=json"]
    args = [
        "--api-version",
        "--cid", req.container_id,
        "--cuuid", req.container_id,
        "--name", req.name,
        "--runtime", str(req.runtime.path),
        "--bundle", str(req.bundle),
        "--container-pidfile", str(req.persist_dir / CONTAINER_PIDFILE),
        "--conmon-pidfile", str(req.persist_dir / CONMON_PIDFILE),
        "--log-path", f"k8s-file:{req.log_path}",
        "--exit-dir", str(req.exit_dir),
        "--persist-dir", str(req.persist_dir),
        "--socket-dir-path", str(req.socket_dir),
        *[arg for runtime_arg in runtime_args for arg in ("--runtime-arg", runtime_arg)],
    ]  # fmt: skip
    if req.runtime.systemd_cgroup:
        args.append("--systemd-cgroup")
    if req.restore_from is not None:
        args += ["--restore", str(req.restore_from)]
    if req.log_size_max is not None and req.log_size_max > 0:
        args += ["--log-size-max", str(req.log_size_max)]
    if req.tty:
        args.append("--terminal")
    if req.stdin:
        args.append("--stdin")
        if not req.stdin_once:
            args.append("--leave-stdin-open")
    return args


def parse_sync_message(line: bytes) -> int | str:
    """The container pid from conmon's sync report, or the runtime's error text."""
    report = json.loads(line)
    pid = int(report.get("data", -1))
    if pid > 0:
        return pid
    message = str(report.get("message", "")).strip()
    return last_error_line(message) or message or "the runtime reported no error message"


async def create_container(req: ConmonCreate) -> ConmonProcess:
    """Start conmon, which runs `<runtime> create`; returns once the container exists
    (created, not started). On failure raises ContainerCreateError (RuntimeTimeout when
    conmon does not report within create_timeout) and leaves no conmon, no runtime, no
    runtime state and no conmon files behind."""
    for directory in (req.exit_dir, req.persist_dir, req.socket_dir, req.log_path.parent):
        directory.mkdir(parents=True, exist_ok=True)
    log_existed = req.log_path.exists()
    sync_read, sync_write = os.pipe()
    start_read, start_write = os.pipe()
    try:
        conmon = await asyncio.create_subprocess_exec(
            str(req.conmon_path),
            *conmon_args(req),
            cwd=req.persist_dir,  # conmon also touches "oom" in its working directory
            env={
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "_OCI_SYNCPIPE": str(sync_write),
                "_OCI_STARTPIPE": str(start_read),
            },
            pass_fds=(sync_write, start_read),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except BaseException:
        for fd in (sync_read, start_write):
            os.close(fd)
        raise
    finally:
        os.close(sync_write)
        os.close(start_read)
    try:
        try:
            async with asyncio.timeout(req.create_timeout):
                outcome = await _release_and_wait(req, conmon, start_write, sync_read)
        except TimeoutError:
            raise RuntimeTimeout(
                f"{req.runtime.name} create {req.container_id}: no report from conmon within "
                f"{req.create_timeout}s; conmon and the runtime were killed",
                "timeout",
            ) from None
    except BaseException as error:
        await asyncio.shield(_clean_failed_create(req, log_existed))
        if isinstance(error, OciRuntimeError):
            log.info(
                "container create failed", extra={"fields": {"container_id": req.container_id, "error": str(error)}}
            )
        raise
    fields = {"container_id": req.container_id, "conmon_pid": outcome.conmon_pid, "pid": outcome.container_pid}
    log.info("container created", extra={"fields": fields})
    return outcome


async def _release_and_wait(
    req: ConmonCreate, conmon: asyncio.subprocess.Process, start_write: int, sync_read: int
) -> ConmonProcess:
    sync_file = io.FileIO(sync_read, "rb")
    try:
        with io.FileIO(start_write, "wb") as start_pipe:
            alive = True
            if req.place_conmon is not None:
                try:
                    await asyncio.to_thread(req.place_conmon, conmon.pid)
                except ProcessLookupError:
                    # conmon died before it could be placed (it refused its arguments): its
                    # own words come next, from its stderr and exit status.
                    alive = False
            if alive:
                start_pipe.write(b"\0")
        # This first conmon forks the monitor and exits; its stderr holds errors from before the fork.
        _, stderr = await conmon.communicate()
        if conmon.returncode != 0:
            raise ContainerCreateError(
                f"conmon {req.container_id}: {stderr.decode(errors='replace').strip()}", "conmon failed"
            )
        line = await _read_line(sync_file)
    finally:
        sync_file.close()
        if conmon.returncode is None:
            conmon.kill()
            await asyncio.shield(exit_status(conmon))
    if not line:
        raise ContainerCreateError(f"create {req.container_id}: conmon exited without a report", "conmon failed")
    result = parse_sync_message(line)
    if isinstance(result, str):
        raise ContainerCreateError(f"{req.runtime.name} create {req.container_id}: {result}", result)
    conmon_pid = _read_pid(req.persist_dir / CONMON_PIDFILE)
    if conmon_pid is None:
        raise ContainerCreateError(f"create {req.container_id}: conmon wrote no pidfile", "conmon failed")
    return ConmonProcess(conmon_pid=conmon_pid, container_pid=result)


async def _read_line(pipe: io.FileIO) -> bytes:
    """Read one line from a pipe without blocking the event loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return await reader.readline()
    finally:
        transport.close()


async def _clean_failed_create(req: ConmonCreate, log_existed: bool) -> None:
    monitor_pid = _read_pid(req.persist_dir / CONMON_PIDFILE)
    if monitor_pid is not None:
        await _kill_with_descendants(monitor_pid)
    await OciRuntime(req.runtime, req.runtime_call_timeout).delete(req.container_id, force=True)
    remove_conmon_files(req.exit_dir, req.socket_dir, req.container_id)
    for name in (CONMON_PIDFILE, CONTAINER_PIDFILE, "exit", OOM_FILE):
        (req.persist_dir / name).unlink(missing_ok=True)
    if not log_existed:
        req.log_path.unlink(missing_ok=True)


async def _kill_with_descendants(pid: int) -> None:
    """SIGKILL a conmon monitor and what it started (a `<runtime> create` that hangs), and wait
    until they are gone."""
    try:
        descendants = [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    await kill_pidfds(open_pidfds([pid, *descendants]))


def read_exit(exit_dir: Path, persist_dir: Path, container_id: str) -> ExitInfo | None:
    """The container's exit as conmon recorded it, or None while it runs."""
    exit_file = exit_dir / container_id
    try:
        text = exit_file.read_text()
        finished_at_ns = exit_file.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    code = int(text.strip()) if re.fullmatch(r"-?[0-9]+", text.strip()) else -1
    return ExitInfo(code=code, finished_at_ns=finished_at_ns, oom_killed=(persist_dir / OOM_FILE).exists())


def read_conmon_process(persist_dir: Path) -> ConmonProcess | None:
    """The pids conmon recorded for a container (for reconciling after a restart)."""
    conmon_pid = _read_pid(persist_dir / CONMON_PIDFILE)
    container_pid = _read_pid(persist_dir / CONTAINER_PIDFILE)
    if conmon_pid is None or container_pid is None:
        return None
    return ConmonProcess(conmon_pid=conmon_pid, container_pid=container_pid)


def attach_socket_path(socket_dir: Path, container_id: str) -> Path:
    return socket_dir / container_id / "attach"


def reopen_log(bundle: Path) -> None:
    """Ask the container's conmon to reopen its log file (after kubelet rotated it)."""
    _write_ctl(bundle, f"{CTL_REOPEN_LOG} 0 0\n")


def resize_terminal(bundle: Path, width: int, height: int) -> None:
    _write_ctl(bundle, f"{CTL_RESIZE_TERMINAL} {height} {width}\n")


def remove_conmon_files(exit_dir: Path, socket_dir: Path, container_id: str) -> None:
    """Remove the exit file and the attach link (conmon 2.1 leaves the link behind)."""
    (exit_dir / container_id).unlink(missing_ok=True)
    (socket_dir / container_id).unlink(missing_ok=True)


def _write_ctl(bundle: Path, message: str) -> None:
    try:
        fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ENOENT):
            raise OciRuntimeError(f"conmon for {bundle} is not running", "no conmon") from error
        raise
    try:
        os.write(fd, message.encode())
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if re.fullmatch(r"[0-9]+", text) and int(text) > 0 else None

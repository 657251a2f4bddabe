"""Calls of an OCI runtime CLI (runc, crun): state, start, kill, delete, exec, update.

Container creation goes through conmon (pycri.oci.conmon); everything else is a
direct call of the runtime binary. Each call gets its own JSON log file so the
error message in an `OciRuntimeError` is the runtime's own last error line. Each
runs in a session of its own and is killed with everything it started when it
outlasts the call timeout (RuntimeTimeout). pycri.oci.driver.ContainerRuntime is
the entry the services use.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pycri.process_exit import exit_status, kill_session, run_bounded

log = logging.getLogger(__name__)

# ExecSync's stdout and stderr together: the CRI's 16 MiB message, less room for the reply's
# framing (two length-prefixed byte fields and the exit code take at most 21 bytes).
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024 - 64
# Processes forked by an exec'd command may keep its output pipes open after it exits;
# exec_sync stops reading at most this long after the runtime has returned.
EXEC_OUTPUT_DRAIN_SECONDS = 2.0
# At an exec timeout the runtime may not have written the exec'd pid yet.
EXEC_PID_FILE_GRACE_SECONDS = 2.0
DEFAULT_CALL_TIMEOUT = 60.0


class OciRuntimeError(RuntimeError):
    """The runtime failed; `detail` is its last error line (or stderr)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ContainerNotFoundError(OciRuntimeError):
    pass


class ExecTimeoutError(OciRuntimeError):
    """exec_sync ran past its timeout; the exec'd process group was killed."""


class RuntimeTimeout(OciRuntimeError):
    """A runtime call (or conmon's create) did not finish in time; it was killed and reaped."""


class ContainerStatus(StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RuntimeHandler:
    name: str
    path: Path
    root: Path  # the runtime's state root (--root), e.g. <state dir>/runc
    systemd_cgroup: bool = False


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: ContainerStatus
    pid: int  # 0 once stopped
    bundle: Path


@dataclass(frozen=True)
class ProcessUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ExecSpec:
    """What to run in a container; unset fields come from the container's own process."""

    args: Sequence[str]
    env: Sequence[str] | None = None
    cwd: str | None = None
    user: ProcessUser | None = None
    tty: bool = False


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


def exec_process(container_process: dict[str, Any], spec: ExecSpec) -> dict[str, Any]:
    """The OCI process for an exec: the container's process (capabilities, apparmor,
    no_new_privileges, rlimits, user, env, cwd) with the exec's args and overrides."""
    process = json.loads(json.dumps(container_process))
    process["args"] = list(spec.args)
    process["terminal"] = spec.tty
    process.pop("consoleSize", None)
    if spec.env is not None:
        process["env"] = list(spec.env)
    if spec.tty and not any(entry.startswith("TERM=") for entry in process.get("env") or []):
        process["env"] = [*(process.get("env") or []), "TERM=xterm"]  # as containerd and CRI-O give a terminal exec
    if spec.cwd is not None:
        process["cwd"] = spec.cwd
    if spec.user is not None:
        user: dict[str, Any] = {"uid": spec.user.uid, "gid": spec.user.gid}
        if spec.user.additional_gids:
            user["additionalGids"] = list(spec.user.additional_gids)
        process["user"] = user
    return process


def last_error_line(log_text: str) -> str:
    """The message of the last error/fatal entry in a runtime's JSON log ("" if none)."""
    message = ""
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            message = str(entry.get("msg", ""))
    return message


def parse_state(raw: dict[str, Any]) -> ContainerState:
    return ContainerState(
        id=raw["id"],
        status=ContainerStatus(raw["status"]),
        pid=int(raw.get("pid") or 0),
        bundle=Path(raw["bundle"]),
    )


@dataclass(frozen=True)
class ExecCall:
    """One `<runtime> exec` in the foreground (exec_sync and the streaming exec): its command
    line, where the runtime writes the exec'd pid and its log, and how it is waited for."""

    runtime_name: str
    container_id: str
    argv: list[str]
    pid_file: Path
    log_file: Path
    setup_timeout: float  # for the runtime to start the process (write the pid file)

    async def spawn(self, **stdio: Any) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*self.argv, start_new_session=True, **stdio)

    async def wait(
        self, proc: asyncio.subprocess.Process, timeout: float | None = None, stop: Awaitable[object] | None = None
    ) -> int | None:
        """The runtime's exit status; None when `timeout` passed or `stop` completed first (the
        exec'd process group and the runtime are killed then, and on cancellation). Raises
        RuntimeTimeout when the runtime has not started the process within the setup timeout."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(exit_status(proc))]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop))
        try:
            async with asyncio.timeout(timeout):
                if not await self._started(proc, waits):
                    await kill_session(proc)
                    raise RuntimeTimeout(
                        f"{self.runtime_name} exec {self.container_id}: the process did not start within "
                        f"{self.setup_timeout}s; the runtime was killed",
                        "timeout",
                    )
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            await asyncio.shield(kill_exec(proc, self.pid_file))
            raise
        finally:
            for waiting in waits:
                waiting.cancel()
        if proc.returncode is None:
            await kill_exec(proc, self.pid_file)
            return None
        return proc.returncode

    async def _started(self, proc: asyncio.subprocess.Process, waits: list[asyncio.Future[Any]]) -> bool:
        """Wait for the pid file, the runtime's exit or `stop`; False when the setup timeout passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.setup_timeout
        delay = 0.005
        while proc.returncode is None and not self.pid_file.exists() and not any(w.done() for w in waits):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
            delay = min(delay * 2, 0.1)
        return True

    def error_line(self) -> str:
        return last_error_line(self.log_file.read_text()) if self.log_file.exists() else ""


class OciRuntime:
    def __init__(self, handler: RuntimeHandler, call_timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.handler = handler
        self.call_timeout = call_timeout

    async def state(self, container_id: str) -> ContainerState | None:
        try:
            completed = await self._run(["state", container_id], container_id)
        except ContainerNotFoundError:
            return None
        return parse_state(json.loads(completed.stdout))

    async def list_containers(self) -> list[ContainerState]:
        completed = await self._run(["list", "--format", "json"])
        return [parse_state(raw) for raw in json.loads(completed.stdout) or []]

    async def start(self, container_id: str) -> None:
        await self._run(["start", container_id], container_id)
        log.info("container started", extra={"fields": {"container_id": container_id}})

    async def kill(self, container_id: str, signal_number: int) -> None:
        """Send a signal. No error when the container has already stopped."""
        try:
            await self._run(["kill", container_id, str(signal_number)], container_id)
        except (ContainerNotFoundError, RuntimeTimeout):
            raise
        except OciRuntimeError:
            state = await self.state(container_id)
            if state is None or state.status != ContainerStatus.STOPPED:
                raise

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Remove the runtime's state of a container. No error when it is already gone."""
        with contextlib.suppress(ContainerNotFoundError):
            await self._run(["delete", *(["--force"] if force else []), container_id], container_id)
            log.info("container deleted", extra={"fields": {"container_id": container_id}})

    async def pause(self, container_id: str) -> None:
        await self._run(["pause", container_id], container_id)

    async def resume(self, container_id: str) -> None:
        await self._run(["resume", container_id], container_id)

    async def checkpoint(self, container_id: str, image_path: Path, work_path: Path, timeout: float | None) -> None:
        """CRIU's images of the running container into `image_path`, its log into `work_path`;
        the container goes on running. `timeout` seconds replace the call timeout when given."""
        args = ["checkpoint", "--leave-running", "--image-path", str(image_path), "--work-path", str(work_path)]
        await self._run([*args, container_id], container_id, timeout)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply an OCI LinuxResources object to a running container."""
        # A file rather than "-": crun's --resources takes a path only.
        with tempfile.NamedTemporaryFile("w", prefix="pycri-resources-", suffix=".json") as resources_file:
            json.dump(resources, resources_file)
            resources_file.flush()
            await self._run(["update", "--resources", resources_file.name, container_id], container_id)

    async def features(self) -> dict[str, Any] | None:
        """`<runtime> features` (None when the runtime does not implement it)."""
        try:
            completed = await self._run(["features"])
        except RuntimeTimeout:
            raise
        except OciRuntimeError:
            return None
        return json.loads(completed.stdout)

    async def version(self) -> str:
        completed = await self._run(["--version"])
        text = completed.stdout.decode(errors="replace")
        found = re.search(r"version\s+(\S+)", text)
        return found.group(1) if found else text.strip().splitlines()[0]

    @contextlib.asynccontextmanager
    async def exec_call(self, container_id: str, bundle: Path, spec: ExecSpec) -> AsyncIterator[ExecCall]:
        """An exec of `spec` in the container whose bundle is `bundle`, ready to spawn (its
        process is the container's own with the exec's overrides, see exec_process)."""
        config = json.loads(await asyncio.to_thread((bundle / "config.json").read_text))
        process = exec_process(config["process"], spec)
        with tempfile.TemporaryDirectory(prefix="pycri-exec-") as workdir:
            process_file = Path(workdir, "process.json")
            process_file.write_text(json.dumps(process))
            pid_file, log_file = Path(workdir, "exec.pid"), Path(workdir, "runtime.log")
            args = ["exec", "--process", str(process_file), "--pid-file", str(pid_file), container_id]
            argv = self._command(log_file, args)
            yield ExecCall(self.handler.name, container_id, argv, pid_file, log_file, self.call_timeout)

    async def exec_sync(self, container_id: str, spec: ExecSpec, timeout: float | None = None) -> ExecResult:
        """Run a process in the container and wait for it; at `timeout` seconds the
        process and its process group are killed and ExecTimeoutError is raised."""
        if spec.tty:
            raise ValueError("exec_sync does not allocate a terminal")
        state = await self.state(container_id)
        if state is None:
            raise ContainerNotFoundError(f"{self.handler.name} exec {container_id}: container does not exist")
        stdout, stderr = bytearray(), bytearray()
        async with self.exec_call(container_id, state.bundle, spec) as call:
            pipe = asyncio.subprocess.PIPE
            proc = await call.spawn(stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe)
            assert proc.stdout is not None and proc.stderr is not None
            readers = asyncio.gather(_collect(proc.stdout, stdout), _collect(proc.stderr, stderr))
            try:
                returncode = await call.wait(proc, timeout)
            except BaseException:
                readers.cancel()
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(readers, EXEC_OUTPUT_DRAIN_SECONDS)
            error_line = call.error_line()
        if returncode is None:
            raise ExecTimeoutError(f"{self.handler.name} exec {container_id}: timed out after {timeout}s", "timeout")
        if error_line:
            if await self.state(container_id) is None:
                raise ContainerNotFoundError(f"{self.handler.name} exec {container_id}: {error_line}", error_line)
            raise OciRuntimeError(f"{self.handler.name} exec {container_id}: {error_line}", error_line)
        kept_stdout, kept_stderr = fit_exec_output(bytes(stdout), bytes(stderr), EXEC_OUTPUT_LIMIT)
        if len(kept_stdout) + len(kept_stderr) < len(stdout) + len(stderr):
            fields = {"container_id": container_id, "limit_bytes": EXEC_OUTPUT_LIMIT}
            log.info("exec output truncated", extra={"fields": fields})
        return ExecResult(exit_code=returncode, stdout=kept_stdout, stderr=kept_stderr)

    def _command(self, log_file: Path, args: Sequence[str]) -> list[str]:
        systemd = ["--systemd-cgroup"] if self.handler.systemd_cgroup else []
        return [
            str(self.handler.path), "--root", str(self.handler.root), *systemd,
            "--log", str(log_file), "--log-format", "json", *args,
        ]  # fmt: skip

    async def _run(
        self, args: Sequence[str], container_id: str | None = None, timeout: float | None = None
    ) -> ExecResult:
        what = f"{self.handler.name} {args[0]}{' ' + container_id if container_id else ''}"
        seconds = timeout if timeout is not None else self.call_timeout
        fd, log_name = tempfile.mkstemp(prefix="pycri-runtime-", suffix=".log")
        os.close(fd)
        log_file = Path(log_name)
        try:
            try:
                done = await run_bounded(self._command(log_file, args), seconds)
            except TimeoutError:
                log.warning("runtime call timed out", extra={"fields": {"call": what, "seconds": seconds}})
                raise RuntimeTimeout(
                    f"{what}: no answer within {seconds}s; the runtime was killed", "timeout"
                ) from None
            error_line = last_error_line(log_file.read_text())
        finally:
            log_file.unlink(missing_ok=True)
        if done.returncode == 0:
            return ExecResult(done.returncode, done.stdout, done.stderr)
        detail = error_line or done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        message = f"{what}: {detail}"
        if container_id is not None and not (self.handler.root / container_id).exists():
            raise ContainerNotFoundError(message, detail)
        raise OciRuntimeError(message, detail)


def fit_exec_output(stdout: bytes, stderr: bytes, limit: int) -> tuple[bytes, bytes]:
    """The first bytes of each stream, at most `limit` together (as containerd, output past the
    cap is dropped, not an error). A stream of at most half the limit is kept whole; the other gets the rest."""
    if len(stdout) + len(stderr) <= limit:
        return stdout, stderr
    half = limit // 2
    if len(stderr) <= half:
        return stdout[: limit - len(stderr)], stderr
    if len(stdout) <= half:
        return stdout, stderr[: limit - len(stdout)]
    return stdout[:half], stderr[: limit - half]


async def _collect(stream: asyncio.StreamReader, sink: bytearray) -> None:
    """Keep the first EXEC_OUTPUT_LIMIT bytes; read (and drop) the rest so the writer never blocks."""
    while chunk := await stream.read(65536):
        room = EXEC_OUTPUT_LIMIT - len(sink)
        if room > 0:
            sink += chunk[:room]


async def kill_exec(runtime_proc: asyncio.subprocess.Process, pid_file: Path) -> None:
    """Kill an exec'd process with its process group (runc makes it a session leader;
    if it leads no group, the process alone), then the runtime call waiting for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXEC_PID_FILE_GRACE_SECONDS
    while runtime_proc.returncode is None and not pid_file.exists() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    # The runtime is the exec'd process's parent: while it runs, the pid cannot be reused.
    if runtime_proc.returncode is None and pid_file.exists():
        pid_text = pid_file.read_text().strip()
        pid = int(pid_text) if re.fullmatch(r"[0-9]+", pid_text) else 0
        if pid > 0:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(exit_status(runtime_proc), EXEC_PID_FILE_GRACE_SECONDS)
    except TimeoutError:
        await kill_session(runtime_proc)

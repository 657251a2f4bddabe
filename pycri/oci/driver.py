"""ContainerRuntime: one runtime handler's containers, created under conmon and driven with
runc or crun. The one entry the services and the pause processes use; pycri.oci.runtime and
pycri.oci.conmon are its parts.

Every call is bounded: a runtime call by `RuntimeTimeouts.call`, conmon's create by
`RuntimeTimeouts.conmon_create`. At the limit the process is killed with what it started
and RuntimeTimeout (an OciRuntimeError) names the command, the container and the seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri import telemetry
from pycri.errors import DeadlineExceeded, PycriError, RuntimeFailure
from pycri.oci import conmon
from pycri.oci.conmon import ConmonCreate, ConmonProcess, ExitInfo
from pycri.oci.runtime import (
    ContainerState,
    ExecCall,
    ExecResult,
    ExecSpec,
    OciRuntime,
    OciRuntimeError,
    RuntimeHandler,
    RuntimeTimeout,
)


@dataclass(frozen=True)
class RuntimeTimeouts:
    """Seconds (config [timeouts] runtime and conmon_create)."""

    call: float
    conmon_create: float


@dataclass(frozen=True)
class ContainerCreate:
    container_id: str
    name: str
    # Holds config.json; conmon's pidfiles, "exit", "oom", "ctl" and "attach" go here too.
    bundle: Path
    log_path: Path
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    # Called (in a thread) with conmon's pid before conmon may start the runtime: moves it into its cgroup.
    place_conmon: Callable[[int], None] | None = None
    # CRIU's images: the container is restored from them, and runs once created.
    restore_from: Path | None = None


class ContainerRuntime:
    """One runtime handler's containers: created under conmon, driven with runc/crun."""

    def __init__(
        self,
        handler: RuntimeHandler,
        conmon: Path,
        exit_dir: Path,
        socket_dir: Path,
        timeouts: RuntimeTimeouts,
        log_size_max: int = -1,
    ) -> None:
        self.handler = handler
        self._conmon = conmon
        self._exit_dir = exit_dir
        self._socket_dir = socket_dir
        self._timeouts = timeouts
        self._log_size_max = log_size_max
        self._runtime = OciRuntime(handler, timeouts.call)

    @property
    def name(self) -> str:
        return self.handler.name

    @property
    def exit_dir(self) -> Path:
        return self._exit_dir

    @property
    def socket_dir(self) -> Path:
        return self._socket_dir

    async def create(self, req: ContainerCreate) -> ConmonProcess:
        """Create the container (not started) under a new conmon. A failure leaves no conmon,
        no runtime state, no conmon files and no log file that was not there before."""
        with telemetry.span("oci.create", self._span_attributes(req.container_id)):
            return await conmon.create_container(
                ConmonCreate(
                    container_id=req.container_id,
                    name=req.name,
                    bundle=req.bundle,
                    runtime=self.handler,
                    log_path=req.log_path,
                    exit_dir=self._exit_dir,
                    persist_dir=req.bundle,
                    socket_dir=self._socket_dir,
                    stdin=req.stdin,
                    stdin_once=req.stdin_once,
                    tty=req.tty,
                    log_size_max=self._log_size_max,
                    place_conmon=req.place_conmon,
                    conmon_path=self._conmon,
                    create_timeout=self._timeouts.conmon_create,
                    runtime_call_timeout=self._timeouts.call,
                    restore_from=req.restore_from,
                )
            )

    async def start(self, container_id: str) -> None:
        with telemetry.span("oci.start", self._span_attributes(container_id)):
            await self._runtime.start(container_id)

    def _span_attributes(self, container_id: str) -> dict[str, str]:
        return {"container.id": container_id, "pycri.runtime_handler": self.handler.name}

    async def kill(self, container_id: str, signal_number: int) -> None:
        """Send a signal; no error when the container has already stopped."""
        await self._runtime.kill(container_id, signal_number)

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Remove the runtime's state of the container; no error when it is gone."""
        await self._runtime.delete(container_id, force)

    async def state(self, container_id: str) -> ContainerState | None:
        return await self._runtime.state(container_id)

    async def list_containers(self) -> list[ContainerState]:
        return await self._runtime.list_containers()

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply an OCI LinuxResources object to a running container."""
        await self._runtime.update(container_id, resources)

    async def pause(self, container_id: str) -> None:
        await self._runtime.pause(container_id)

    async def resume(self, container_id: str) -> None:
        await self._runtime.resume(container_id)

    async def checkpoint(self, container_id: str, image_path: Path, work_path: Path, timeout: float | None) -> None:
        """CRIU's images of the running container (left running); `timeout` replaces the call timeout."""
        await self._runtime.checkpoint(container_id, image_path, work_path, timeout)

    async def exec_sync(self, container_id: str, spec: ExecSpec, timeout: float | None) -> ExecResult:
        """Run a process in the container and wait for it (ExecTimeoutError after `timeout`)."""
        return await self._runtime.exec_sync(container_id, spec, timeout)

    def exec_call(
        self, container_id: str, bundle: Path, spec: ExecSpec
    ) -> contextlib.AbstractAsyncContextManager[ExecCall]:
        """A `<runtime> exec` to spawn with the caller's stdio (the streaming exec)."""
        return self._runtime.exec_call(container_id, bundle, spec)

    async def features(self) -> dict[str, Any] | None:
        return await self._runtime.features()

    async def version(self) -> str:
        return await self._runtime.version()

    def read_exit(self, container_id: str, bundle: Path) -> ExitInfo | None:
        """The exit conmon recorded, None while the container runs (a blocking file read)."""
        return conmon.read_exit(self._exit_dir, bundle, container_id)

    def remove_conmon_files(self, container_id: str) -> None:
        """The exit file and the attach link (the files in the bundle go with the bundle)."""
        conmon.remove_conmon_files(self._exit_dir, self._socket_dir, container_id)

    def reopen_log(self, bundle: Path) -> None:
        conmon.reopen_log(bundle)

    def resize_terminal(self, bundle: Path, width: int, height: int) -> None:
        conmon.resize_terminal(bundle, width, height)

    def attach_socket(self, container_id: str) -> Path:
        return conmon.attach_socket_path(self._socket_dir, container_id)


def runtime_error(exc: OciRuntimeError, what: str, otherwise: type[PycriError] = RuntimeFailure) -> PycriError:
    """The CRI error for a failed runtime or conmon call: DEADLINE_EXCEEDED when it ran out of time."""
    kind = DeadlineExceeded if isinstance(exc, RuntimeTimeout) else otherwise
    return kind(f"{what}: {exc}")

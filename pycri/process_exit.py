"""Waiting for processes to exit and killing the ones pycri runs (runtimes, conmon, CNI plugins)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil


async def wait_for_exit(pid: int, timeout: float | None, kill_after: bool = False) -> bool:
    """Wait until a process exits (True), or `timeout` passes (False; with kill_after the
    process is then SIGKILLed and awaited). Works for processes that are not our children."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        await asyncio.wait_for(pidfd_exited(pidfd), timeout)
        return True
    except TimeoutError:
        if not kill_after:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        await pidfd_exited(pidfd)
        return False
    finally:
        os.close(pidfd)


async def pidfd_exited(pidfd: int) -> None:
    """Return once the process behind `pidfd` has exited."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)


async def exit_status(proc: asyncio.subprocess.Process) -> int:
    """A child's exit status once it has exited. Unlike Process.wait(), this does not also wait
    for its output pipes to close, which processes it left behind may hold open."""
    if proc.returncode is None:
        await wait_for_exit(proc.pid, None)
    while proc.returncode is None:  # the child watcher reaps it a moment later
        await asyncio.sleep(0.005)
    return proc.returncode


async def kill_session(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a child started in a session of its own (start_new_session) with the processes
    still in its process group, and return once they have all exited (the child reaped)."""
    if proc.returncode is None:
        # While it is our unreaped child, its pid (and so its group id) is its own.
        members = open_pidfds(pid for pid in psutil.pids() if _group_of(pid) == proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # also reaches a member forked after the scan
        await kill_pidfds(members)
    await exit_status(proc)


def open_pidfds(pids: Iterable[int]) -> list[int]:
    """pidfds of those of `pids` that still exist; held, they keep a reused pid from being hit."""
    pidfds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            pidfds.append(os.pidfd_open(pid))
    return pidfds


async def kill_pidfds(pidfds: list[int]) -> None:
    """SIGKILL the processes behind `pidfds`, wait until all have exited, and close the pidfds."""
    try:
        for pidfd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        await asyncio.gather(*(pidfd_exited(pidfd) for pidfd in pidfds))
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@dataclass(frozen=True)
class Finished:
    """What a program run to its end left: its exit status and output."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run_bounded(argv: Sequence[str], timeout: float, stdin: bytes | None = None) -> Finished:
    """Run `argv` in a session of its own and wait for it; after `timeout` seconds, or when the caller
    is cancelled, the whole session is killed (TimeoutError, or the cancellation, goes on up)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        await asyncio.shield(kill_session(proc))
        raise
    assert proc.returncode is not None
    return Finished(proc.returncode, stdout, stderr)

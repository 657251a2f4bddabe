"""Exec over a stream: `runc exec` in the foreground, wired to the client's channels.

Without a terminal, runc hands its stdio to the exec'd process, so the process's
output comes straight through our pipes. With one, runc allocates the container's
pty itself and copies it to and from its own stdio, which must be a terminal: as
CRI-O does, runc's stdio is a pty of ours, and a resize sets our pty's size and
sends runc SIGWINCH, upon which runc copies the size to the container's pty. (A
console socket would hand us the container's pty directly, but runc accepts one only
when it detaches, and then nobody could wait for the exit code.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path

from pycri.oci.driver import ContainerRuntime
from pycri.oci.runtime import EXEC_OUTPUT_DRAIN_SECONDS, ExecCall, ExecSpec, OciRuntimeError
from pycri.stream.remotecommand import CommandStreams, Outcome, TerminalSize

log = logging.getLogger(__name__)

READ_SIZE = 32 * 1024


async def run_exec(
    runtime: ContainerRuntime, container_id: str, bundle: Path, command: list[str], streams: CommandStreams
) -> Outcome:
    """Run `command` in the container until it exits or the client goes away (then it is killed)."""
    failed = f"{runtime.name} exec {container_id}"
    try:
        async with runtime.exec_call(container_id, bundle, ExecSpec(args=command, tty=streams.options.tty)) as call:
            runner = _run_on_terminal if streams.options.tty else _run_on_pipes
            returncode = await runner(call, streams)
            error_line = call.error_line()
    except OciRuntimeError as error:
        return Outcome(error=str(error), command=tuple(command))
    except (OSError, ValueError) as error:
        return Outcome(error=f"{failed}: {error}", command=tuple(command))
    if returncode is None:
        return Outcome(error="the client went away; the process was killed", command=tuple(command))
    if error_line:
        return Outcome(error=f"{failed}: {error_line}", command=tuple(command))
    log.info("exec finished", extra={"fields": {"container_id": container_id, "exit_code": returncode}})
    return Outcome(exit_code=returncode, command=tuple(command))


async def _run_on_pipes(call: ExecCall, streams: CommandStreams) -> int | None:
    options = streams.options
    pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    proc = await call.spawn(
        stdin=pipe if options.stdin else null,
        stdout=pipe if options.stdout else null,
        stderr=pipe if options.stderr else null,
    )
    outputs = []
    if proc.stdout is not None:
        outputs.append(asyncio.create_task(_copy_output(proc.stdout.read, streams.write_stdout)))
    if proc.stderr is not None:
        outputs.append(asyncio.create_task(_copy_output(proc.stderr.read, streams.write_stderr)))
    feeder = asyncio.create_task(_feed_pipe(streams, proc.stdin)) if proc.stdin is not None else None
    return await _wait(call, proc, streams, outputs, [feeder] if feeder else [])


async def _run_on_terminal(call: ExecCall, streams: CommandStreams) -> int | None:
    master, slave = os.openpty()
    try:
        proc = await call.spawn(stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    input_fd = os.dup(master)  # a separate fd: closing the reader's transport closes `master`
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", 0)
    )
    try:
        outputs = [asyncio.create_task(_copy_output(_pty_reader(reader), streams.write_stdout))]
        helpers = [
            asyncio.create_task(_feed_terminal(streams, input_fd)),
            asyncio.create_task(_apply_resizes(streams, input_fd, proc)),
        ]
        return await _wait(call, proc, streams, outputs, helpers)
    finally:
        transport.close()
        os.close(input_fd)


async def _wait(
    call: ExecCall, proc: asyncio.subprocess.Process, streams: CommandStreams, outputs: list[asyncio.Task[None]],
    helpers: list[asyncio.Task[None]],
) -> int | None:  # fmt: skip
    """The exit code once runc exits and the output is drained; None (process killed) if the client left."""
    try:
        returncode = await call.wait(proc, stop=streams.client_gone.wait())
        if returncode is not None:
            # Processes the command left behind may hold the output open; stop waiting for them.
            await asyncio.wait(outputs, timeout=EXEC_OUTPUT_DRAIN_SECONDS)
        return returncode
    finally:
        for task in (*outputs, *helpers):
            task.cancel()


async def _copy_output(read: Callable[[int], Awaitable[bytes]], write: Callable[[bytes], Awaitable[None]]) -> None:
    while data := await read(READ_SIZE):
        await write(data)


def _pty_reader(reader: asyncio.StreamReader) -> Callable[[int], Awaitable[bytes]]:
    """Reads of the pty master; its end shows as EIO once runc, the last holder of the other side, exits."""

    async def read(size: int) -> bytes:
        try:
            return await reader.read(size)
        except OSError as error:
            if error.errno == errno.EIO:
                return b""
            raise

    return read


async def _feed_pipe(streams: CommandStreams, stdin: asyncio.StreamWriter) -> None:
    try:
        while data := await streams.read_stdin():
            stdin.write(data)
            await stdin.drain()
    except ConnectionError:
        pass  # the process closed its stdin
    finally:
        stdin.close()


async def _feed_terminal(streams: CommandStreams, master: int) -> None:
    """Client input to the terminal; its end does not end the terminal (as with kubelet)."""
    loop = asyncio.get_running_loop()
    while data := await streams.read_stdin():
        while data:
            try:
                written = os.write(master, data)
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(master, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(master)
                continue
            except OSError:
                return  # the other side is gone
            data = data[written:]


async def _apply_resizes(streams: CommandStreams, master: int, runc: asyncio.subprocess.Process) -> None:
    while True:
        size: TerminalSize = await streams.resizes.get()
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))
        # runc is our unreaped child while returncode is None, so its pid is still its own.
        if runc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(runc.pid, signal.SIGWINCH)

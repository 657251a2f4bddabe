"""Attach over a stream: the client joins conmon's attach socket for a running container.

conmon serves a SOCK_SEQPACKET socket per container (<bundle>/attach). Each packet it
sends is one byte naming the pipe (2 stdout, 3 stderr) and then the data; what a client
sends goes to the container's stdin as it is. Closing our sending side tells conmon
that stdin ended, which closes the container's stdin when it was created stdin_once.
Terminal resizes go through conmon's ctl fifo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from pycri.oci import conmon
from pycri.oci.runtime import OciRuntimeError
from pycri.stream.remotecommand import CommandStreams, Outcome

log = logging.getLogger(__name__)

# conmon reads at most this much of one packet; larger packets would be cut short.
INPUT_PACKET_SIZE = 8192
OUTPUT_PACKET_SIZE = 65536
_STDOUT_PIPE, _STDERR_PIPE = 2, 3


async def run_attach(bundle: Path, streams: CommandStreams, stdin_once: bool) -> Outcome:
    """Relay between the client and the container until its output ends, the client leaves,
    or (for a container that keeps its stdin open) the client's stdin ends."""
    try:
        attach_socket = await _connect(bundle)
    except OSError as error:
        return Outcome(error=f"attach to conmon's socket in {bundle}: {error.strerror or error}")
    output = asyncio.create_task(_relay_output(attach_socket, streams))
    gone = asyncio.create_task(streams.client_gone.wait())
    relay_input = asyncio.create_task(_relay_input(attach_socket, streams)) if streams.options.stdin else None
    resizes = asyncio.create_task(_apply_resizes(bundle, streams)) if streams.options.tty else None
    waiting = {output, gone} if relay_input is None else {output, gone, relay_input}
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        # The client's stdin ended. A container that keeps its stdin open goes on alone (as with
        # CRI-O); any other sees its stdin close, and the attach lasts until its output ends.
        if relay_input in done and (streams.options.tty or stdin_once):
            await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (output, gone, relay_input, resizes):
            if task is not None:
                task.cancel()
        attach_socket.close()
    return Outcome()


async def _connect(bundle: Path) -> socket.socket:
    """Connect through /proc/self/fd: the bundle path may be longer than a socket address allows."""
    directory = os.open(bundle, os.O_PATH | os.O_CLOEXEC)
    attach_socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    attach_socket.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(attach_socket, f"/proc/self/fd/{directory}/attach")
    except BaseException:
        attach_socket.close()
        raise
    finally:
        os.close(directory)
    return attach_socket


async def _relay_output(attach_socket: socket.socket, streams: CommandStreams) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            packet = await loop.sock_recv(attach_socket, OUTPUT_PACKET_SIZE)
        except OSError:
            return
        if not packet:
            return
        if packet[0] == _STDERR_PIPE and not streams.options.tty:
            await streams.write_stderr(packet[1:])
        elif packet[0] in (_STDOUT_PIPE, _STDERR_PIPE):
            await streams.write_stdout(packet[1:])


async def _relay_input(attach_socket: socket.socket, streams: CommandStreams) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while data := await streams.read_stdin():
            for start in range(0, len(data), INPUT_PACKET_SIZE):
                await loop.sock_sendall(attach_socket, data[start : start + INPUT_PACKET_SIZE])
        attach_socket.shutdown(socket.SHUT_WR)


async def _apply_resizes(bundle: Path, streams: CommandStreams) -> None:
    while True:
        size = await streams.resizes.get()
        try:
            conmon.resize_terminal(bundle, size.width, size.height)
        except OciRuntimeError as error:
            log.info("terminal resize failed", extra={"fields": {"bundle": str(bundle), "error": str(error)}})

"""`pycri serve`: the gRPC server on the CRI unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc

from pycri import telemetry
from pycri.config import Config, ConfigSource
from pycri.daemon import Daemon
from pycri.reload import Reloader
from pycri.sdnotify import ServiceManager
from pycri.server.handlers import image_service_handlers, runtime_service_handlers

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
# The socket is born with SOCKET_MODE: a chmod after bind would leave a window with the umask's mode.
SOCKET_UMASK = 0o777 & ~SOCKET_MODE
SHUTDOWN_GRACE_SECONDS = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class SocketInUse(RuntimeError):
    """A live server already answers on the socket path."""


def claim_socket_path(path: Path) -> None:
    """Make `path` free for binding: a stale socket is removed, a live one is refused,
    and anything that is not a socket is left alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        log.info("removing stale socket", extra={"fields": {"socket": str(path)}})
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another server is already serving on {path}")


@contextlib.contextmanager
def file_creation_mask(mask: int) -> Iterator[None]:
    """The process umask set to `mask` for the block (it is process-wide: keep the block short)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


async def serve(config: Config, source: ConfigSource, service_manager: ServiceManager | None = None) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads the config from `source` (pycri/reload.py).
    `service_manager` hears READY=1 once start-up (recovery included) is done and the socket answers,
    RELOADING=1 and READY=1 around a reload, STOPPING=1 at the end, and watchdog pings while pycri runs."""
    manager = service_manager or ServiceManager()
    loop = asyncio.get_running_loop()
    hangup_at_start = asyncio.Event()  # a SIGHUP during start-up is acted on once pycri serves
    loop.add_signal_handler(signal.SIGHUP, hangup_at_start.set)
    watchdog = asyncio.create_task(manager.keep_watchdog_fed())
    daemon = Daemon.open(config)
    reloader = Reloader(daemon, source, manager, f"serving CRI on {config.socket}")
    try:
        claim_socket_path(config.socket)
        await telemetry.start(config, daemon.state)  # before recovery, which it measures
        await daemon.start()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        server.add_generic_rpc_handlers((runtime_service_handlers(daemon), image_service_handlers(daemon)))
        with file_creation_mask(SOCKET_UMASK):  # gRPC binds the socket in add_insecure_port
            server.add_insecure_port(f"unix:{config.socket}")
            await server.start()
        log.info("serving", extra={"fields": {"socket": str(config.socket), "root": str(config.root_dir)}})
        manager.ready(f"serving CRI on {config.socket}")
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        if hangup_at_start.is_set():
            reloader.request()
        await _wait_for_signal()
        loop.add_signal_handler(signal.SIGHUP, hangup_at_start.set)  # no reload while stopping
        await reloader.close()
        manager.stopping()
        log.info("shutting down", extra={"fields": {"grace_s": SHUTDOWN_GRACE_SECONDS}})
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        config.socket.unlink(missing_ok=True)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await daemon.close()
        await telemetry.stop()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

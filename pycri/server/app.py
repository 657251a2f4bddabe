"""`pycri serve`: the gRPC server on the CRI unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import stat
from pathlib import Path

import grpc

from pycri.config import Config
from pycri.daemon import Daemon
from pycri.sdnotify import ServiceManager
from pycri.server.handlers import image_service_handlers, runtime_service_handlers

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
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


async def serve(config: Config, service_manager: ServiceManager | None = None) -> None:
    """Serve until SIGTERM or SIGINT. `service_manager` hears READY=1 once start-up (recovery included) is
    done and the socket answers, STOPPING=1 at the signal, and watchdog pings while pycri runs."""
    manager = service_manager or ServiceManager()
    watchdog = asyncio.create_task(manager.keep_watchdog_fed())
    daemon = Daemon.open(config)
    try:
        claim_socket_path(config.socket)
        await daemon.start()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        server.add_generic_rpc_handlers((runtime_service_handlers(daemon), image_service_handlers(daemon)))
        server.add_insecure_port(f"unix:{config.socket}")
        await server.start()
        config.socket.chmod(SOCKET_MODE)
        log.info("serving", extra={"fields": {"socket": str(config.socket), "root": str(config.root_dir)}})
        manager.ready(f"serving CRI on {config.socket}")
        await _wait_for_signal()
        manager.stopping()
        log.info("shutting down", extra={"fields": {"grace_s": SHUTDOWN_GRACE_SECONDS}})
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        config.socket.unlink(missing_ok=True)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await daemon.close()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

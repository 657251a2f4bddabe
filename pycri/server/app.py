"""`pycri serve`: the gRPC server on the CRI unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc

from pycri import telemetry
from pycri.config import Config, ConfigSource
from pycri.daemon import Daemon
from pycri.reload import Reloader
from pycri.sdnotify import ServiceManager
from pycri.server.handlers import image_service_handlers, runtime_service_handlers
from pycri.unix_socket import claim_socket_path, file_creation_mask

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
# The socket is born with SOCKET_MODE: a chmod after bind would leave a window with the umask's mode.
SOCKET_UMASK = 0o777 & ~SOCKET_MODE
SHUTDOWN_GRACE_SECONDS = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


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

"""The service manager's protocol (systemd's sd_notify): READY, STOPPING, STATUS and watchdog pings.

systemd hands a Type=notify service its notify socket and watchdog settings in the environment.
Those variables are addressed to pycri's own process: runc, for one, takes NOTIFY_SOCKET as a
request to proxy the container's readiness and fails `runc start` when it cannot. So pycri takes
them out of its environment at start (`from_environment`), before any child is started, and keeps
what it needs here. Removed, because they name the main process's socket, fds or watchdog:
NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES. Kept, because
they only describe the unit and no child acts on them wrongly: INVOCATION_ID, JOURNAL_STREAM
(whose reader checks it against its own stderr), MANAGERPID and the *_DIRECTORY variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

SERVICE_MANAGER_VARIABLES: tuple[str, ...] = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


@dataclass(frozen=True)
class ServiceManager:
    """Where to send notifications (None: not run by a notifying manager) and how often to ping."""

    notify_socket: str | None = None
    watchdog_interval: float | None = None  # seconds: half of WatchdogSec, as systemd advises

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str], pid: int | None = None) -> ServiceManager:
        """Read the service manager's variables and remove them from `environ` (so no child inherits them)."""
        taken = {name: environ.pop(name) for name in SERVICE_MANAGER_VARIABLES if name in environ}
        notify_socket = taken.get("NOTIFY_SOCKET") or None
        if notify_socket is not None and not notify_socket.startswith(("/", "@")):
            log.warning("ignoring NOTIFY_SOCKET: not a unix socket path", extra={"fields": {"socket": notify_socket}})
            notify_socket = None
        interval = _watchdog_interval(taken, os.getpid() if pid is None else pid)
        return cls(notify_socket, interval if notify_socket is not None else None)

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; False when there is no socket or the send failed.

        A manager that went away must not take pycri down with it: failures are logged, not raised.
        """
        if self.notify_socket is None:
            return False
        address = "\0" + self.notify_socket[1:] if self.notify_socket.startswith("@") else self.notify_socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(assignments).encode(), address)
        except OSError as exc:
            log.warning("service manager notification failed", extra={"fields": {"error": str(exc)}})
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=shutting down")

    async def keep_watchdog_fed(self) -> None:
        """Ping the watchdog until cancelled; returns at once when no watchdog is asked for.

        Pings come from the event loop, so a loop that hangs stops them and the manager restarts pycri.
        """
        if self.watchdog_interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


def _watchdog_interval(taken: dict[str, str], pid: int) -> float | None:
    """Half of WATCHDOG_USEC in seconds, when the watchdog is meant for `pid` (sd_watchdog_enabled's rules)."""
    usec, watchdog_pid = taken.get("WATCHDOG_USEC", ""), taken.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if watchdog_pid is not None and (not watchdog_pid.isdigit() or int(watchdog_pid) != pid):
        return None
    return int(usec) / 2 / 1_000_000

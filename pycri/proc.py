"""Processes pycri did not fork (containers, pause processes, conmon), known by PID and start time.

A PID alone may have been reused by an unrelated process after pycri restarted or the node
rebooted; the start time in /proc/<pid>/stat tells them apart. A pidfd opened and then checked
against the start time pins the right process, so a signal or a wait never reaches another.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from pycri.process_exit import pidfd_exited

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def boot_id() -> str:
    return BOOT_ID_PATH.read_text().strip()


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        started = start_time(pid) if pid > 0 else None
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return self.pid > 0 and start_time(self.pid) == self.start_time

    def _pidfd(self) -> int | None:
        """A pidfd on this very process, or None when it is gone (or the PID was reused)."""
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return None
        if start_time(self.pid) != self.start_time:
            os.close(fd)
            return None
        return fd

    def signal(self, signal_number: int) -> bool:
        """Send a signal; False when the process is gone."""
        fd = self._pidfd()
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, signal_number)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)

    async def wait_exit(self, timeout: float) -> bool:
        """True once the process has exited (or was never this one), False when `timeout` passes."""
        fd = self._pidfd()
        if fd is None:
            return True
        try:
            await asyncio.wait_for(pidfd_exited(fd), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            os.close(fd)

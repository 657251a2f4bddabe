"""Is CRIU usable on this host? `criu --version` (at least 3.16, what containerd asks for) and
`criu check`, asked once per daemon (Criu): neither the binary nor the kernel changes under it. A
checkpoint or restore on a host where CRIU is unusable fails with FAILED_PRECONDITION and
CRIU's own words, never a fake success."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from dataclasses import dataclass

from pycri.errors import FailedPrecondition
from pycri.process_exit import run_bounded

log = logging.getLogger(__name__)

MIN_VERSION = (3, 16)
PROBE_SECONDS = 60.0


@dataclass(frozen=True)
class CriuStatus:
    usable: bool
    reason: str  # why not, in CRIU's words; empty when usable
    version: str = ""


class Criu:
    """The host's CRIU as one daemon knows it: probed on first use, then kept. The lock that
    makes concurrent first calls share one probe is made then too, on the loop that asks."""

    def __init__(self) -> None:
        self._status: CriuStatus | None = None
        self._probing: asyncio.Lock | None = None

    async def status(self) -> CriuStatus:
        if self._status is None:
            if self._probing is None:
                self._probing = asyncio.Lock()
            async with self._probing:
                if self._status is None:
                    self._status = await probe_criu()
                    fields = {"usable": self._status.usable, "reason": self._status.reason}
                    log.info("criu probed", extra={"fields": fields})
        return self._status

    async def require(self, what: str) -> CriuStatus:
        """FAILED_PRECONDITION naming `what` and the reason when CRIU cannot be used here."""
        status = await self.status()
        if not status.usable:
            raise FailedPrecondition(f"{what}: CRIU is not usable on this host: {status.reason}")
        return status


async def probe_criu() -> CriuStatus:
    """Ask the host's criu now: its version, then `criu check`."""
    criu = shutil.which("criu")
    if criu is None:
        return CriuStatus(False, "the criu binary is not installed (Debian package criu)")
    code, output = await _run(criu, "--version")
    found = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", output)
    if code != 0 or found is None:
        return CriuStatus(False, f"`criu --version` answered {code}: {output.strip() or 'nothing'}")
    version = ".".join(part for part in found.groups() if part is not None)
    if (int(found.group(1)), int(found.group(2))) < MIN_VERSION:
        return CriuStatus(False, f"criu {version} is older than {'.'.join(map(str, MIN_VERSION))}", version)
    code, output = await _run(criu, "check")
    if code != 0:
        errors = [line.strip() for line in output.splitlines() if line.strip()]
        return CriuStatus(False, f"`criu check` failed: {' | '.join(errors[-4:]) or f'exit status {code}'}", version)
    return CriuStatus(True, "", version)


async def _run(*argv: str) -> tuple[int, str]:
    try:
        done = await run_bounded(argv, PROBE_SECONDS)
    except TimeoutError:
        return -1, f"no answer within {PROBE_SECONDS}s"
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")

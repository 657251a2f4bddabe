"""Is CRIU usable on this host? `criu --version` (at least 3.16, what containerd asks for) and
`criu check`, asked once per daemon: neither the binary nor the kernel changes under it. A
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


_status: CriuStatus | None = None
_probing = asyncio.Lock()


async def criu_status() -> CriuStatus:
    """The host's CRIU, probed on first use."""
    global _status
    async with _probing:
        if _status is None:
            _status = await _probe()
            log.info("criu probed", extra={"fields": {"usable": _status.usable, "reason": _status.reason}})
        return _status


async def require_criu(what: str) -> CriuStatus:
    """FAILED_PRECONDITION naming `what` and the reason when CRIU cannot be used here."""
    status = await criu_status()
    if not status.usable:
        raise FailedPrecondition(f"{what}: CRIU is not usable on this host: {status.reason}")
    return status


async def _probe() -> CriuStatus:
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

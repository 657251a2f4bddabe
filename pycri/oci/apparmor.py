"""pycri's default AppArmor profile: loaded into the kernel at start where AppArmor is enabled.

A container asking for RuntimeDefault gets `pycri-default` there; on a host without
AppArmor it runs unconfined by AppArmor (seccomp and capabilities still apply), and the
runtime's status says so.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from pycri.oci.spec_security import APPARMOR_DEFAULT_PROFILE
from pycri.process_exit import run_bounded

log = logging.getLogger(__name__)

APPARMOR_PARSER = Path("/sbin/apparmor_parser")
ENABLED_FILE = Path("/sys/module/apparmor/parameters/enabled")


def default_profile_text() -> str:
    return resources.files("pycri").joinpath("data/apparmor-default.profile").read_text()


def apparmor_enabled(enabled_file: Path = ENABLED_FILE) -> bool:
    try:
        return enabled_file.read_text().strip() == "Y"
    except OSError:
        return False


async def compile_profile(text: str, parser: Path, load: bool, timeout: float) -> None:
    """Compile the profile, and with `load` replace it in the kernel; RuntimeError says why not."""
    args = [str(parser), "--replace" if load else "--skip-kernel-load", "--skip-cache"]
    if not load:
        args.append("--skip-read-cache")
    try:
        done = await run_bounded(args, timeout, stdin=text.encode())
    except TimeoutError:
        raise RuntimeError(f"{parser} did not finish in {timeout:g}s") from None
    if done.returncode != 0:
        raise RuntimeError(f"{parser}: {done.stderr.decode(errors='replace').strip() or f'exit {done.returncode}'}")


async def load_default_profile(parser: Path, timeout: float) -> str:
    """Load `pycri-default` where AppArmor is enabled; returns what the runtime status reports."""
    if not apparmor_enabled():
        return "AppArmor is not enabled on this host: RuntimeDefault runs unconfined by AppArmor"
    try:
        await compile_profile(default_profile_text(), parser, load=True, timeout=timeout)
    except (OSError, RuntimeError) as exc:
        log.error("loading the default AppArmor profile failed", extra={"fields": {"error": str(exc)}})
        return f"the default AppArmor profile {APPARMOR_DEFAULT_PROFILE} could not be loaded: {exc}"
    log.info("default AppArmor profile loaded", extra={"fields": {"profile": APPARMOR_DEFAULT_PROFILE}})
    return f"RuntimeDefault is AppArmor profile {APPARMOR_DEFAULT_PROFILE}"

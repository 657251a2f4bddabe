"""`pycri install-service`: write pycri's systemd unit for the pycri that runs the command, then enable it.

The unit (pycri/data/pycri.service, also contrib/pycri.service) is Type=notify with Delegate=yes and
KillMode=process, so a restart of pycri never kills containers. Its ExecStart is rewritten to this
installation's `pycri` script (a venv's or a system one) and the --config given to the command.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pycri.hostinfo import is_executable

UNIT_NAME = "pycri.service"
UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # exists when systemd is PID 1 (sd_booted)
SYSTEMCTL = "systemctl"


class InstallError(RuntimeError):
    """The unit was not installed; the message says why."""


@dataclass(frozen=True)
class Installed:
    path: Path
    changed: bool  # False: the same unit was there already
    enabled: bool  # systemctl enabled it (systemd runs this host)
    next_steps: str  # what to run by hand, when pycri did not


def shipped_unit() -> str:
    return resources.files("pycri").joinpath("data", UNIT_NAME).read_text(encoding="utf-8")


def pycri_command() -> list[str]:
    """How to run this pycri: the console script beside this interpreter, else `python -m pycri`."""
    script = Path(sys.executable).parent / "pycri"
    return [str(script)] if is_executable(script) else [sys.executable, "-m", "pycri"]


# What systemd refuses in the program path of ExecStart= (string_is_safe: control characters and
# backslash and quotes), and the C escapes it reads in the arguments.
_UNSAFE_IN_PROGRAM = re.compile(r"[\x00-\x1f\x7f\\'\"]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _exec_words(args: list[str]) -> str:
    """`args` as an ExecStart= value. systemd takes shell-style quotes there but reads more than a
    shell would: "%" starts a specifier everywhere ("%%"), and in the arguments after the program
    C escapes apply inside quotes too (a backslash is doubled, a control character written \\xNN)
    and "$" starts a variable ("$$"). The program path is taken literally, and one with a
    backslash, quote or control character is refused by systemd: InstallError."""
    program, *rest = args
    if _UNSAFE_IN_PROGRAM.search(program):
        raise InstallError(
            f"systemd runs no program whose path has a backslash, quote or control character: {program!r}"
        )
    words = [shlex.quote(program).replace("%", "%%")]
    for arg in rest:
        quoted = _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", shlex.quote(arg).replace("\\", "\\\\"))
        words.append(quoted.replace("%", "%%").replace("$", "$$"))
    return " ".join(words)


def render_unit(command: list[str], config: Path | None) -> str:
    """The shipped unit with ExecStart running `command [--config PATH] serve`."""
    args = [*command, *(["--config", str(config.absolute())] if config is not None else []), "serve"]
    exec_start = "ExecStart=" + _exec_words(args)
    unit, count = re.subn(r"(?m)^ExecStart=.*$", lambda _: exec_start, shipped_unit())
    if count != 1:
        raise InstallError(f"the shipped {UNIT_NAME} has {count} ExecStart lines, expected one")
    return unit


def install_unit(
    unit: str, unit_dir: Path = UNIT_DIR, *, start: bool = False, force: bool = False, systemd: Path | None = None
) -> Installed:
    """Write `unit` to unit_dir/pycri.service (a different one there is replaced only with `force`) and,
    where systemd runs, reload it and enable the unit (and start it with `start`)."""
    path = unit_dir / UNIT_NAME
    try:
        existing = path.read_text() if path.exists() else None
    except OSError as error:
        raise InstallError(f"cannot read {path}: {error}") from None
    if existing is not None and existing != unit and not force:
        raise InstallError(f"{path} exists and differs from the unit pycri would write; --force replaces it")
    if existing != unit:
        try:
            unit_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{UNIT_NAME}.tmp")
            tmp.write_text(unit)
            tmp.chmod(0o644)
            tmp.replace(path)
        except OSError as error:
            raise InstallError(f"cannot write {path}: {error}") from None
    enable = [SYSTEMCTL, "enable", *(["--now"] if start else []), UNIT_NAME]
    steps = f"{SYSTEMCTL} daemon-reload && {shlex.join(enable)}"
    if not (systemd or SYSTEMD_RUNNING).is_dir():
        return Installed(path, existing != unit, False, f"systemd does not run this host; where it does: {steps}")
    for command in ([SYSTEMCTL, "daemon-reload"], enable):
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise InstallError(f"{shlex.join(command)} failed: {done.stderr.strip() or done.returncode}")
    return Installed(path, existing != unit, True, "" if start else f"{SYSTEMCTL} start {UNIT_NAME}")

"""`pycri install-service`: the shipped unit, rewritten for this pycri, written where systemd reads units."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri import service_unit
from pycri.cli import main
from pycri.service_unit import InstallError, install_unit, pycri_command, render_unit, shipped_unit

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("keep_root_logger")]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never enable a unit on the machine running the tests."""
    monkeypatch.setattr(service_unit, "SYSTEMD_RUNNING", tmp_path / "no-systemd")


def unit_lines(unit: str) -> list[str]:
    return [line for line in unit.splitlines() if line and not line.startswith("#")]


def test_contrib_unit_is_the_shipped_one() -> None:
    assert (REPO / "contrib" / "pycri.service").read_text() == shipped_unit()


def test_the_unit_keeps_containers_across_restarts_and_reloads_on_sighup() -> None:
    lines = unit_lines(shipped_unit())
    for setting in ("Type=notify", "KillMode=process", "Delegate=yes", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert setting in lines
    assert any(line.startswith("LimitNOFILE=") for line in lines)
    assert "TasksMax=infinity" in lines


def test_exec_start_runs_this_pycri_with_its_config(tmp_path: Path) -> None:
    unit = render_unit(["/opt/my venv/bin/pycri"], tmp_path / "100%.toml")
    (exec_start,) = [line for line in unit_lines(unit) if line.startswith("ExecStart=")]
    assert shlex.split(exec_start.removeprefix("ExecStart=").replace("%%", "%")) == [
        "/opt/my venv/bin/pycri",
        "--config",
        str(tmp_path / "100%.toml"),
        "serve",
    ]
    assert "ExecStart=/usr/bin/pycri serve" in unit_lines(render_unit(["/usr/bin/pycri"], None))


def systemd_exec_argv(value: str) -> list[str]:
    """An ExecStart= value as systemd.service(5) and systemd.unit(5) say it is read: "%%" is "%"
    (other specifiers are not expected here), the value is split into words with single or double
    quotes and C escapes, and in every word after the program "$$" is "$"."""
    assert re.fullmatch(r"(?:[^%]|%%)*", value), f"a specifier in {value!r}"
    text = value.replace("%%", "%")
    words: list[str] = []
    position = 0
    while position < len(text):
        if text[position] == " ":
            position += 1
            continue
        word, quote = "", ""
        while position < len(text) and (quote or text[position] != " "):
            char = text[position]
            if char in "'\"" and not quote:
                quote = char
            elif char == quote:
                quote = ""
            elif char == "\\":
                escape = text[position + 1]
                if escape == "x":
                    word += chr(int(text[position + 2 : position + 4], 16))
                    position += 2
                else:
                    word += {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}[escape]
                position += 1
            else:
                word += char
            position += 1
        assert not quote, f"unbalanced quotes in {value!r}"
        words.append(word)
    program, *rest = words
    for arg in rest:
        assert re.fullmatch(r"(?:[^$]|\$\$)*", arg), f"a variable in {arg!r}"
    return [program, *(arg.replace("$$", "$") for arg in rest)]


def exec_start_of(unit: str) -> str:
    """The ExecStart= value, the unit split into lines as systemd splits it (not at U+0085 and the like)."""
    (line,) = [line for line in unit.split("\n") if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


PROGRAMS = st.text(st.sampled_from("/ab9_-.%$ :;"), min_size=1).map(lambda tail: "/opt/" + tail)
PATHS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1)


@given(PROGRAMS, PATHS)
def test_exec_start_keeps_every_argument_as_systemd_reads_it(program: str, config: str) -> None:
    unit = render_unit([program, "-m", "pycri"], Path("/etc") / config.replace("/", "_"))
    assert systemd_exec_argv(exec_start_of(unit)) == [
        program, "-m", "pycri", "--config", str(Path("/etc") / config.replace("/", "_")), "serve"
    ]  # fmt: skip


@pytest.mark.parametrize("program", ["/opt/a\\b/pycri", "/opt/it's/pycri", "/opt/a\nb/pycri"])
def test_a_program_path_systemd_refuses_is_an_install_error(program: str) -> None:
    with pytest.raises(InstallError, match="backslash, quote or control character"):
        render_unit([program], None)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_itself_finds_the_program_and_nothing_to_warn_about(tmp_path: Path) -> None:
    # The program must exist under its decoded name; the arguments must hold no unknown escape,
    # specifier or unbalanced quote (systemd-analyze says so on stderr).
    program = tmp_path / "dollar$HOME percent%n" / "pycri"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "pycri.service"
    unit.write_text(render_unit([str(program)], tmp_path / "x$y%z\\w\n'\"q.toml"))
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert (verified.returncode, verified.stderr) == (0, "")


def test_the_command_is_the_script_beside_the_interpreter() -> None:
    command = pycri_command()
    assert command[0].startswith(str(Path(sys.executable).parent))


def test_install_writes_once_and_refuses_to_replace_another_unit(tmp_path: Path) -> None:
    unit_dir = tmp_path / "system"
    first = install_unit("unit A\n", unit_dir)
    assert (first.changed, first.enabled) == (True, False)
    assert "systemctl daemon-reload && systemctl enable pycri.service" in first.next_steps
    assert (unit_dir / "pycri.service").read_text() == "unit A\n"
    assert (unit_dir / "pycri.service").stat().st_mode & 0o777 == 0o644
    assert install_unit("unit A\n", unit_dir).changed is False
    with pytest.raises(InstallError, match="--force"):
        install_unit("unit B\n", unit_dir)
    assert (unit_dir / "pycri.service").read_text() == "unit A\n"
    assert install_unit("unit B\n", unit_dir, force=True, start=True).changed
    assert (unit_dir / "pycri.service").read_text() == "unit B\n"


def test_the_command_writes_the_unit_and_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pycri.toml"
    config.write_text("")
    assert main(["--config", str(config), "install-service", "--unit-dir", str(tmp_path), "--now"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'pycri.service'}" in out
    assert "systemctl enable --now pycri.service" in out
    written = (tmp_path / "pycri.service").read_text()
    assert f"--config {config} serve" in written

"""`pycri install-service`: the shipped unit, rewritten for this pycri, written where systemd reads units."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

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

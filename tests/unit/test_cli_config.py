"""`pycri config`: the effective config as TOML that reads back as the same config."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycri.cli import main
from pycri.config import Config, HandlerConfig, config_to_toml, load_config

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("keep_root_logger")]


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main([*args, "config"]) == 0
    return capsys.readouterr().out


def test_printed_defaults_load_back_equal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    printed = printed_config(capsys, "--config", str(empty))
    again = tmp_path / "again.toml"
    again.write_text(printed)
    assert load_config(again) == load_config(empty) == Config()


def test_unset_keys_are_commented_lines_that_read_back_unset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    printed = printed_config(capsys, "--config", str(empty))
    assert '# docker_config = ""  (unset)' in printed.splitlines()
    assert '# tls_cert_file = ""  (unset)' in printed.splitlines()
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text(printed.replace('# docker_config = ""  (unset)', 'docker_config = ""'))
    assert load_config(uncommented).images.docker_config is None


def test_every_key_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    printed = printed_config(capsys, "--config", str(empty))
    assert 'log_format = "logfmt"' in printed
    rendered = tomllib.loads(printed)
    for section in ("runtime", "cni", "images", "streaming", "timeouts"):
        fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
        unset = {name for name in fields if getattr(getattr(Config(), section), name) is None}
        assert set(rendered[section]) == fields - unset, section


def test_command_line_overrides_show_in_the_printed_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    printed = printed_config(capsys, "--config", str(empty), "--log-level", "debug", "--log-format", "json")
    assert tomllib.loads(printed)["log_level"] == "debug"
    assert tomllib.loads(printed)["log_format"] == "json"


texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    handler_name=texts,
    annotations=st.lists(texts, max_size=3),
    pause_image=texts,
    mirrors=st.dictionaries(texts, st.lists(texts, min_size=1, max_size=2), max_size=3),
    root=st.one_of(st.none(), texts.map(lambda text: "/" + text)),
)
def test_any_strings_round_trip(
    tmp_path: Path,
    handler_name: str,
    annotations: list[str],
    pause_image: str,
    mirrors: dict[str, list[str]],
    root: str | None,
) -> None:
    config = Config()
    config.runtime.pause_image = pause_image
    config.runtime.handlers[handler_name] = HandlerConfig(
        path=Path("/usr/bin/crun"), root=Path(root) if root else None, allowed_annotations=annotations
    )
    config.images.mirrors = mirrors
    path = tmp_path / "round.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config

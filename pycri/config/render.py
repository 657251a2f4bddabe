"""The effective config as TOML (`pycri config`): every key, unset ones as comments."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pycri.config.sections import Config


def config_to_toml(config: Config) -> str:
    """Render the effective config as TOML (for `pycri config`)."""
    lines: list[str] = []
    _render_table(lines, dataclasses.asdict(config), [])
    return "\n".join(lines).strip() + "\n"


def _render_table(lines: list[str], table: dict[str, Any], path: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(toml_key(p) for p in path)}]")
    for key, value in scalars.items():
        if value is None:
            # Commented out, ready to edit: "" reads back as unset, so uncommenting it changes nothing.
            lines.append(f'# {toml_key(key)} = ""  (unset)')
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, value in tables.items():
        _render_table(lines, value, [*path, key])


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_value(value: Any) -> str:
    """One TOML value: a bool, number, list or string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(char: str) -> str:
    """A character as a TOML basic string holds it: quote, backslash and control characters escaped."""
    if char in '"\\':
        return "\\" + char
    if char < " " or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char

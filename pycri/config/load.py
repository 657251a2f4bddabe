"""Reading the TOML file into the section dataclasses, key by key, with errors that name the key."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycri.config.sections import DEFAULT_CONFIG_PATH, Config, ConfigError
from pycri.config.validate import validate


@dataclass(frozen=True)
class ConfigSource:
    """Where a config comes from: the file (None: the default path if it exists) and the command
    line's overrides, which win over the file at start and at every reload."""

    path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Config:
        return load_config(self.path, self.overrides)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (the default path when None, if it exists) and apply CLI overrides."""
    raw: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or source.exists():
        try:
            raw = tomllib.loads(source.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {source} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    config = _build(Config, raw, prefix="")
    validate(config)
    return config


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (value {raw[unknown[0]]!r})")
    values = {name: _convert(hints[name], raw[name], prefix + name) for name in fields if name in raw}
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value in (None, ""):
            return None
        return _convert(options[0], value, key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a table, got {value!r}")
        return {k: _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Path:
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"config key {key!r}: expected an absolute path, got {value!r}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or isinstance(value, bool) and hint is not bool:
        raise ConfigError(f"config key {key!r}: expected {hint.__name__}, got {value!r}")
    return value

"""Structured logs on stderr: one line per event, logfmt (the default) or JSON.

Modules log with `log.info("pulled image", extra={"fields": {"ref": ref}})`;
the formatter renders time, level, logger, message and those fields: as
key=value pairs that both people and log collectors read (logfmt), or as one
JSON object per line for log shippers (json).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
BASE_KEYS = ("time", "level", "logger", "msg")
# The key a JSON line gives a logged exception's traceback ("error" is a common field name).
JSON_EXCEPTION_KEY = "exception"


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "fields", None) or {}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"time={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts.extend(f"{key}={_quote(value)}" for key, value in _fields(record).items())
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, then the fields at the top level.

    A field named like one of the base keys is kept as "field.<name>"; values JSON has no
    type for (paths, enums) are written as their str().
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line[f"field.{key}" if key in BASE_KEYS or key == JSON_EXCEPTION_KEY else str(key)] = value
        if record.exc_info:
            line[JSON_EXCEPTION_KEY] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


FORMATTERS: dict[str, type[logging.Formatter]] = {"logfmt": LogfmtFormatter, "json": JsonFormatter}


class _PycriHandler(logging.StreamHandler):
    """The stderr handler pycri installs; found again (not added twice) when logging is set up anew."""


def setup_logging(level: str, log_format: str = "logfmt") -> None:
    """Log at `level` in `log_format` to stderr. Called again (a config reload), it swaps the level
    and the formatter of the handler already installed, so no line is lost or doubled meanwhile."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _PycriHandler)), None)
    if handler is None:
        handler = _PycriHandler(sys.stderr)
        root.handlers[:] = [handler]
    handler.setFormatter(FORMATTERS[log_format]())
    root.setLevel(_LEVELS[level])
    # Libraries' own debug lines (grpc's "Loaded running loop" on every call) would drown pycri's.
    for library in ("asyncio", "grpc"):
        logging.getLogger(library).setLevel(logging.WARNING)

"""Log lines: logfmt for people, JSON (one object per line) for log shippers."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.config import LOG_FORMATS
from pycri.log import FORMATTERS, JsonFormatter, LogfmtFormatter, setup_logging

pytestmark = pytest.mark.unit


def record(msg: str, fields: dict[str, object] | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as error:
            exc_info = (type(error), error, error.__traceback__)
    made = logging.LogRecord("pycri.test", logging.WARNING, __file__, 1, msg, None, exc_info)
    if fields is not None:
        made.fields = fields  # type: ignore[attr-defined]
    return made


def test_every_configurable_format_has_a_formatter() -> None:
    assert set(FORMATTERS) == set(LOG_FORMATS)


def test_json_line_has_the_base_keys_and_the_fields_at_the_top() -> None:
    line = JsonFormatter().format(record("pulled image", {"ref": "busybox:1", "bytes": 12, "root": Path("/r")}))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "warning"
    assert parsed["logger"] == "pycri.test"
    assert parsed["msg"] == "pulled image"
    assert parsed["time"].endswith("Z") and "T" in parsed["time"]
    assert (parsed["ref"], parsed["bytes"], parsed["root"]) == ("busybox:1", 12, "/r")


def test_a_field_named_like_a_base_key_does_not_replace_it() -> None:
    parsed = json.loads(JsonFormatter().format(record("real", {"msg": "field", "level": 3})))
    assert (parsed["msg"], parsed["level"]) == ("real", "warning")
    assert (parsed["field.msg"], parsed["field.level"]) == ("field", 3)


def test_an_exception_is_one_key_of_the_same_line() -> None:
    line = JsonFormatter().format(record("failed", {"error": "kept"}, exc=True))
    parsed = json.loads(line)
    assert parsed["error"] == "kept"
    assert "ValueError: boom" in parsed["exception"]


@given(st.text(), st.dictionaries(st.text(min_size=1), st.one_of(st.text(), st.integers(), st.none())))
def test_any_message_and_fields_make_one_json_line(msg: str, fields: dict[str, object]) -> None:
    line = JsonFormatter().format(record(msg, fields))
    assert "\n" not in line
    assert json.loads(line)["msg"] == msg


def test_logfmt_quotes_what_needs_quoting() -> None:
    line = LogfmtFormatter().format(record("two words", {"path": "/a b", "n": 1}))
    assert line.endswith('msg="two words" path="/a b" n=1')


def test_set_up_again_swaps_format_and_level_on_the_one_handler(
    keep_root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("info", "logfmt")
    handler = keep_root_logger.handlers[0]
    logging.getLogger("pycri.a").info("first", extra={"fields": {"k": "v"}})
    logging.getLogger("pycri.a").debug("hidden")
    setup_logging("debug", "json")
    assert keep_root_logger.handlers == [handler]
    logging.getLogger("pycri.a").debug("second", extra={"fields": {"k": "v"}})
    first, second = stream.getvalue().splitlines()
    assert first.startswith("time=") and first.endswith("msg=first k=v")
    assert json.loads(second) | {"time": ""} == {
        "time": "",
        "level": "debug",
        "logger": "pycri.a",
        "msg": "second",
        "k": "v",
    }

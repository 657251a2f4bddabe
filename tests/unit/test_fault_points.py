"""Kill points in the code and the KILL_POINTS list agree: each listed name is placed exactly once,
and nothing is placed that the fault suite does not know of."""

from __future__ import annotations

import ast
import functools
from collections import Counter
from pathlib import Path

import pytest

import pycri
from pycri.faults import KILL_POINTS

PACKAGE = Path(pycri.__file__).resolve().parent


@functools.cache
def kill_point_calls() -> tuple[tuple[Path, int, ast.expr], ...]:
    """(file, line, argument) of every `kill_point(...)` call in the package."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            callee = node.func
            name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", None)
            if name == "kill_point":
                argument = node.args[0] if node.args else ast.Constant(None)
                calls.append((path.relative_to(PACKAGE.parent), node.lineno, argument))
    return tuple(calls)


def placed_names() -> Counter[str]:
    return Counter(
        argument.value
        for _path, _line, argument in kill_point_calls()
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str)
    )


def test_every_kill_point_is_named_by_a_literal() -> None:
    computed = [
        f"{path}:{line}"
        for path, line, argument in kill_point_calls()
        if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str))
    ]
    assert computed == [], "kill_point needs a string literal so this test can see it"


def test_every_placed_kill_point_is_listed() -> None:
    unlisted = sorted(set(placed_names()) - set(KILL_POINTS))
    assert unlisted == [], f"kill points in the code but not in pycri.faults.KILL_POINTS: {unlisted}"


def test_kill_points_are_listed_once() -> None:
    assert [name for name, count in Counter(KILL_POINTS).items() if count > 1] == []


@pytest.mark.parametrize("name", KILL_POINTS)
def test_listed_kill_point_is_placed_exactly_once(name: str) -> None:
    count = placed_names()[name]
    assert count != 0, f"kill point {name!r} is not placed in pycri/ yet"
    assert count == 1, f"kill point {name!r} is placed {count} times in pycri/"

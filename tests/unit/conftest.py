"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def keep_root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level put back afterwards: `pycri.cli.main` sets up
    pycri's logging on it, which would take pytest's capture handlers away."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import PycriProcess, remove_tree, short_tempdir


@pytest.fixture
def pycri_dir() -> Iterator[Path]:
    base = short_tempdir()
    yield base
    remove_tree(base)


@pytest.fixture
def pycri(pycri_dir: Path) -> Iterator[PycriProcess]:
    """A running pycri with its own socket, root, state and CNI conf dirs."""
    daemon = PycriProcess(pycri_dir).start()
    yield daemon
    daemon.stop()

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_sandbox_support import Node
from tests.support.busybox_images import TestImages
from tests.support.daemon import PycriProcess, remove_tree, short_tempdir
from tests.support.pods import Workloads, node_with_images, workloads_on


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


@pytest.fixture(scope="module")
def node(test_images: TestImages) -> Iterator[Node]:
    """A pycri on a private pod network with the test images pulled (modules may define their own)."""
    with node_with_images(test_images) as running:
        yield running


@pytest.fixture
def work(node: Node) -> Iterator[Workloads]:
    """Pods and containers on `node`, all removed when the test ends."""
    with workloads_on(node) as workloads:
        yield workloads


@pytest.fixture(scope="session")
def busybox(test_images: TestImages) -> str:
    return test_images.busybox.reference

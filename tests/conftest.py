"""Marker handling and the session's registry and test images."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.busybox_images import TestImages, build_test_images
from tests.support.registry import LocalRegistry, registry_available

# No timed assertions: these machines are shared and noisy, so property tests get no per-example deadline.
settings.register_profile("pycri", deadline=None)
settings.load_profile("pycri")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip_integration = pytest.mark.skip(reason="integration tests need root (runc, mounts, network namespaces)")
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(skip_integration)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    if not registry_available():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as local_registry:
        yield local_registry


@pytest.fixture(scope="session")
def test_images(registry: LocalRegistry) -> TestImages:
    return build_test_images(registry.url)

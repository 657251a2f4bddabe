"""The committed NRI modules match proto/nri and carry NRI's wire names."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from pycri.nri.pb import api_pb2

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_nri_api", REPO_ROOT / "tools" / "gen_nri_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_modules_match_protos(tmp_path: Path) -> None:
    generator = _load_generator()
    generator.generate(tmp_path)
    for name in generator.MODULE_NAMES:
        assert (tmp_path / name).read_bytes() == (REPO_ROOT / "pycri" / "nri" / "pb" / name).read_bytes(), (
            f"pycri/nri/pb/{name} is stale: run `python tools/gen_nri_api.py` and commit the result"
        )


def test_services_and_names_are_nris() -> None:
    assert api_pb2.DESCRIPTOR.package == "nri.pkg.api.v1alpha1"
    services = api_pb2.DESCRIPTOR.services_by_name
    assert services["Runtime"].full_name == "nri.pkg.api.v1alpha1.Runtime"
    assert [m.name for m in services["Runtime"].methods] == ["RegisterPlugin", "UpdateContainers"]
    assert len(services["Plugin"].methods) == 18
    assert api_pb2.Event.Value("VALIDATE_CONTAINER_ADJUSTMENT") == 14
    assert api_pb2.Container.DESCRIPTOR.fields_by_name["CDI_devices"].number == 20
    assert api_pb2.ContainerAdjustment.DESCRIPTOR.fields_by_name["args"].number == 9

"""The committed CRI v1 stubs match the proto and expose both services."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from pycri.api import api_pb2, api_pb2_grpc

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]

STREAMING_RUNTIME_METHODS = {
    "StreamPodSandboxes",
    "StreamContainers",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "GetContainerEvents",
    "StreamPodSandboxMetrics",
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api", REPO_ROOT / "tools" / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingChannel:
    """Stands in for grpc.Channel and records which paths a stub binds, by call kind."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _recorder(self, kind: str) -> Callable[..., None]:
        def record(path: str, **_options: object) -> None:
            self.paths[path] = kind

        return record

    def __getattr__(self, kind: str) -> Callable[..., None]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._recorder(kind)
        raise AttributeError(kind)


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    gen_api = _load_generator()
    gen_api.generate(tmp_path)
    committed_dir = REPO_ROOT / "pycri" / "api"
    for name in gen_api.STUB_NAMES:
        assert (tmp_path / name).read_bytes() == (committed_dir / name).read_bytes(), (
            f"pycri/api/{name} is stale: run `python tools/gen_api.py` and commit the result"
        )


def test_both_services_with_all_methods() -> None:
    services = api_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"RuntimeService", "ImageService"}
    assert len(services["RuntimeService"].methods) == 37
    assert len(services["ImageService"].methods) == 6
    assert services["RuntimeService"].full_name == "runtime.v1.RuntimeService"


def test_stub_paths_and_streaming_kinds() -> None:
    channel = RecordingChannel()
    api_pb2_grpc.RuntimeServiceStub(channel)
    api_pb2_grpc.ImageServiceStub(channel)

    assert channel.paths["/runtime.v1.RuntimeService/Version"] == "unary_unary"
    assert channel.paths["/runtime.v1.ImageService/PullImage"] == "unary_unary"
    streaming = {path.rsplit("/", 1)[1] for path, kind in channel.paths.items() if kind == "unary_stream"}
    assert streaming == STREAMING_RUNTIME_METHODS | {"StreamImages"}
    assert set(channel.paths.values()) == {"unary_unary", "unary_stream"}
    assert len(channel.paths) == 37 + 6

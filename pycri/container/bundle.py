"""The files a container is made of: its layer dirs, bundle, bind sources and log path."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pycri.api import api_pb2
from pycri.errors import InvalidArgument
from pycri.sandbox.metadata import SandboxRecord
from pycri.undo import UndoStack


def log_path_of(sandbox: SandboxRecord, config: api_pb2.ContainerConfig, layers: Path) -> Path:
    if not config.log_path:
        return layers / "container.log"
    if os.path.isabs(config.log_path) or ".." in Path(config.log_path).parts:
        raise InvalidArgument(f"config.log_path: {config.log_path!r} must be relative to the pod's log directory")
    if not sandbox.log_directory:
        raise InvalidArgument("config.log_path: the pod sandbox has no log_directory")
    return Path(sandbox.log_directory) / config.log_path


def make_dirs(parent: Path, names: tuple[str, ...]) -> None:
    parent.mkdir(parents=True, mode=0o700)
    for name in names:
        (parent / name).mkdir()


def make_bind_source(source: Path, undo: UndoStack) -> None:
    """Create a missing bind source as containerd does; undo removes only what was made, if still empty."""
    missing = [source, *(p for p in source.parents if not p.exists())]
    source.mkdir(parents=True)
    for made in reversed(missing):
        undo.push(f"remove bind source {made}", lambda made=made: made.rmdir())


def write_bundle(bundle: Path, spec: dict[str, object]) -> None:
    bundle.mkdir(parents=True, mode=0o700)
    (bundle / "config.json").write_text(json.dumps(spec))

"""Where the layers of pods with user namespaces live and who may walk there (pycri.userns.layout),
which added mounts and devices such a pod's containers need pycri's help with (pycri.userns.mounts),
and that the orphan sweep knows the subtree (pycri.recovery)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pycri.api import api_pb2
from pycri.errors import FailedPrecondition
from pycri.recovery.mounts import Owner, path_owner
from pycri.recovery.sweep import SweepScope
from pycri.userns.layout import container_layers, hand_to_pod_root, open_for_pod_roots, pause_layers
from pycri.userns.mappings import IdRange, UserNamespaceMappings, in_pod_user_namespace
from pycri.userns.mounts import bind_mounts, check_device_nodes, is_bind

pytestmark = pytest.mark.unit

ID = "ab" * 32
MAPPINGS = UserNamespaceMappings(IdRange(0, 100000, 65536), IdRange(0, 100000, 65536))
NULL = os.stat("/dev/null").st_rdev


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_only_the_root_dir_and_the_subtree_become_search_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for private in (root / "containers", root / "sandboxes"):
        private.mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    open_for_pod_roots(root)
    open_for_pod_roots(root)  # at every start: the same modes
    subtree = [root / "userns", root / "userns" / "containers", root / "userns" / "sandboxes"]
    assert [mode(path) for path in (root, *subtree)] == [0o711] * 4
    assert [mode(root / "containers"), mode(root / "sandboxes")] == [0o700, 0o700]
    assert container_layers(root, ID) == root / "userns" / "containers" / ID
    assert pause_layers(root, ID) == root / "userns" / "sandboxes" / ID


def test_a_dir_above_the_layers_others_may_not_search_is_named_and_nothing_changes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    open_for_pod_roots(root)
    layers = container_layers(root, ID)
    (layers / "upper").mkdir(parents=True, mode=0o700)
    layers.chmod(0o700)
    root.chmod(0o700)  # as an older pycri, or someone, left it
    with pytest.raises(FailedPrecondition, match=f"needs .*{root}.* searchable by others"):
        hand_to_pod_root(MAPPINGS, layers)
    assert (mode(layers), layers.stat().st_gid) == (0o700, os.getgid())


def test_a_container_asks_for_its_pods_user_namespace_by_mode_pod() -> None:
    config = api_pb2.ContainerConfig()
    assert not in_pod_user_namespace(config)
    options = config.linux.security_context.namespace_options
    options.userns_options.mode = api_pb2.NamespaceMode.NODE
    assert not in_pod_user_namespace(config)
    options.userns_options.mode = api_pb2.NamespaceMode.POD
    assert in_pod_user_namespace(config)


def test_binds_are_known_by_type_or_option() -> None:
    spec: dict[str, Any] = {
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/a", "type": "bind", "source": "/srv/a"},
            {"destination": "/b", "source": "/srv/b", "options": ["ro", "rbind"]},
            {"destination": "/c", "type": "none", "source": "/srv/c", "options": ["bind"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ]
    }
    assert [is_bind(mount) for mount in spec["mounts"]] == [False, True, True, True, False]
    assert bind_mounts(spec) == {("/a", "/srv/a"), ("/b", "/srv/b"), ("/c", "/srv/c")}


def device(path: str, kind: str = "c", major: int = os.major(NULL), minor: int = os.minor(NULL)) -> dict[str, Any]:
    return {"linux": {"devices": [{"path": path, "type": kind, "major": major, "minor": minor}]}}


@pytest.mark.parametrize("kind", ["c", "u"])
def test_a_device_the_host_has_at_its_path_is_fine(kind: str) -> None:
    check_device_nodes(device("/dev/null", kind))
    check_device_nodes({"linux": {}})


@pytest.mark.parametrize(
    "spec",
    [
        device("/dev/vendor-null"),  # renamed: the host has nothing there
        device("/dev/null", minor=os.minor(NULL) + 1),  # another device at that path
        device("/dev/null", "b"),  # another type
        device("/dev"),  # a dir
    ],
    ids=["renamed", "other-number", "other-type", "dir"],
)
def test_a_device_the_host_has_not_at_its_path_is_refused_by_name(spec: dict[str, Any]) -> None:
    path = spec["linux"]["devices"][0]["path"]
    with pytest.raises(FailedPrecondition, match=f"device {path} .*runc binds the host's device node"):
        check_device_nodes(spec)


def test_the_sweep_finds_owners_in_the_user_namespace_subtree(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    scope = SweepScope(root_dir=root, state_dir=state, runtimes=(), pod_cgroup_parents=())
    bases = tuple(str(base) for base in scope.object_bases())
    assert path_owner(str(container_layers(root, ID) / "rootfs"), bases) == Owner("container", ID)
    assert path_owner(str(pause_layers(root, ID) / "rootfs"), bases) == Owner("sandbox", ID)
    assert path_owner(str(root / "containers" / ID / "rootfs"), bases) == Owner("container", ID)
    assert path_owner(str(root / "userns" / "containers"), bases) is None
    assert path_owner(str(root / "userns"), bases) is None

"""The ID mappings of a pod's user namespace: what is accepted, and what is refused by field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.config import Config
from pycri.errors import InvalidArgument
from pycri.sandbox.plan import plan_sandbox
from pycri.userns.mappings import (
    ID_SPACE_END,
    IdRange,
    UserNamespaceMappings,
    check_container,
    check_container_matches_pod,
    user_namespace,
)

pytestmark = pytest.mark.unit

FIELD = "config.linux.security_context.namespace_options"
POD, NODE = api_pb2.NamespaceMode.POD, api_pb2.NamespaceMode.NODE
U32 = st.integers(min_value=0, max_value=2**32 - 1)
# Mostly the edges: container ID 0, lengths and host IDs at the end of the ID space.
EDGY_U32 = st.one_of(st.sampled_from([0, 1, 65536, ID_SPACE_END - 65536, ID_SPACE_END - 1, ID_SPACE_END]), U32)
MAPPING = api_pb2.IDMapping(container_id=0, host_id=100000, length=65536)
PARSED = UserNamespaceMappings(IdRange(0, 100000, 65536), IdRange(0, 100000, 65536))


def options(
    mode: int = POD, uids: list[api_pb2.IDMapping] | None = None, gids: list[api_pb2.IDMapping] | None = None
) -> api_pb2.NamespaceOption:
    namespaces = api_pb2.NamespaceOption()
    namespaces.userns_options.mode = mode  # type: ignore[assignment]
    namespaces.userns_options.uids.extend([MAPPING] if uids is None else uids)
    namespaces.userns_options.gids.extend([MAPPING] if gids is None else gids)
    return namespaces


def acceptable(mapping: api_pb2.IDMapping) -> bool:
    return mapping.container_id == 0 and mapping.length > 0 and mapping.host_id + mapping.length <= ID_SPACE_END


@given(container_id=EDGY_U32, host_id=EDGY_U32, length=EDGY_U32)
def test_one_mapping_is_accepted_exactly_when_kubelets_scheme_allows_it(
    container_id: int, host_id: int, length: int
) -> None:
    mapping = api_pb2.IDMapping(container_id=container_id, host_id=host_id, length=length)
    if acceptable(mapping):
        parsed = user_namespace(options(uids=[mapping]), FIELD)
        assert parsed is not None
        assert parsed.uids == IdRange(0, host_id, length) and parsed.root_uid == host_id
        assert parsed.oci()["uidMappings"] == [{"containerID": 0, "hostID": host_id, "size": length}]
        assert parsed.uids.proc_line() == f"0 {host_id} {length}\n"
    else:
        with pytest.raises(InvalidArgument, match=rf"^{FIELD}\.userns_options\.uids\[0\]"):
            user_namespace(options(uids=[mapping]), FIELD)


@given(count=st.integers(min_value=0, max_value=5).filter(lambda n: n != 1), which=st.sampled_from(["uids", "gids"]))
def test_anything_but_one_mapping_is_refused(count: int, which: str) -> None:
    mappings = [MAPPING] * count
    namespaces = options(**{which: mappings})
    with pytest.raises(
        InvalidArgument, match=rf"userns_options\.{which}: exactly one mapping is supported, got {count}"
    ):
        user_namespace(namespaces, FIELD)


def test_node_mode_is_the_hosts_user_namespace() -> None:
    assert user_namespace(api_pb2.NamespaceOption(), FIELD) is None
    assert user_namespace(options(NODE, [], []), FIELD) is None
    with pytest.raises(InvalidArgument, match="mode NODE .* takes no uids or gids"):
        user_namespace(options(NODE), FIELD)


@pytest.mark.parametrize(
    ("mode", "name"),
    [(api_pb2.NamespaceMode.CONTAINER, "CONTAINER"), (api_pb2.NamespaceMode.TARGET, "TARGET"), (7, "7")],
)
def test_other_modes_are_refused(mode: int, name: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"userns_options\.mode: {name} is not supported"):
        user_namespace(options(mode), FIELD)


def test_a_container_must_ask_for_exactly_its_pods_user_namespace() -> None:
    check_container_matches_pod(PARSED, PARSED, "f")
    check_container_matches_pod(None, None, "f")
    other = UserNamespaceMappings(IdRange(0, 200000, 65536), PARSED.gids)
    for container, pod, message in (
        (None, PARSED, "must ask for it"),
        (PARSED, None, "host's user namespace"),
        (other, PARSED, "mappings differ"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            check_container_matches_pod(container, pod, "f")


def container(*mounts: api_pb2.Mount, userns: bool = True) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(mounts=list(mounts))
    if userns:
        config.linux.security_context.namespace_options.CopyFrom(options())
    return config


def test_id_mapped_mounts_take_the_pods_mappings_only() -> None:
    mapped = api_pb2.Mount(container_path="/v", host_path="/srv", uidMappings=[MAPPING], gidMappings=[MAPPING])
    check_container(container(mapped), PARSED)
    check_container(container(api_pb2.Mount(container_path="/v", host_path="/srv")), PARSED)
    with pytest.raises(InvalidArgument, match=r"^config\.mounts\[0\]: an ID-mapped mount needs a pod sandbox"):
        check_container(container(mapped, userns=False), None)
    shifted = api_pb2.IDMapping(container_id=0, host_id=300000, length=65536)
    with pytest.raises(InvalidArgument, match=r"^config\.mounts\[0\]: an ID-mapped mount takes the pod sandbox's own"):
        check_container(container(api_pb2.Mount(uidMappings=[shifted], gidMappings=[shifted])), PARSED)
    with pytest.raises(InvalidArgument, match=r"^config\.mounts\[0\]\.gidMappings: exactly one mapping"):
        check_container(container(api_pb2.Mount(uidMappings=[MAPPING])), PARSED)


def pod_config(**modes: int) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(name="p", namespace="n", uid="u"))
    config.linux.security_context.namespace_options.CopyFrom(options())
    for kind, mode in modes.items():
        setattr(config.linux.security_context.namespace_options, kind, mode)
    return config


@pytest.mark.parametrize("kind", ["network", "ipc", "pid"])
def test_a_pod_in_a_user_namespace_cannot_use_the_hosts_other_namespaces(kind: str) -> None:
    settings = Config()
    plan_sandbox(pod_config(), "", settings)
    with pytest.raises(InvalidArgument, match=rf"namespace_options\.{kind}: NODE cannot go with a user namespace"):
        plan_sandbox(pod_config(**{kind: NODE}), "", settings)

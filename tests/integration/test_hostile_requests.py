"""Every RPC against one real pycri with malformed, oversized and contradictory messages.

Each answer must be a status a client can act on (never INTERNAL, UNKNOWN or a dropped
connection), the daemon must keep serving, and a refused request must leave nothing behind:
no pod, container, mount or namespace pin under its dirs, conmon process, cgroup or row.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.image.reference import InvalidReference, parse_reference
from tests.support.busybox_images import TestImages
from tests.support.leaks import take, wait_for_no_leaks
from tests.support.pods import RPC_TIMEOUT, Workloads, container_config, node_with_images, workloads_on

pytestmark = pytest.mark.integration

SERVICES: tuple[ServiceDescriptor, ...] = (
    api_pb2.DESCRIPTOR.services_by_name["RuntimeService"],
    api_pb2.DESCRIPTOR.services_by_name["ImageService"],
)
STREAMS_UNTIL_CANCELLED = {"GetContainerEvents"}
METHODS = [
    pytest.param(service, method, id=method.name)
    for service in SERVICES
    for method in service.methods
    if method.name not in STREAMS_UNTIL_CANCELLED
]
# What no request, however wrong, may earn: a crash, a runtime's raw failure, or a hang.
IMPROPER = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.DATA_LOSS,
}
HOSTILE_TEXT = [
    "",
    "/",
    ".",
    "..",
    "../../../etc",
    "/etc",
    "a/b",
    "\0",
    "x\0y",
    "line\nbreak",
    "\x7f",
    "\u202e",
    "sha256:zz",
    "sha256:" + "0" * 64,
    "sha256:" + "0" * 65,
    "busybox@sha256:abc",
    "busybox@md5:00",
    "0" * 64,
    "abc",
    "10.0.0.0/33",
    "%s%n",
    "x" * 5000,
    "x" * 70000,
]
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 6


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=12))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values] + [-1, 999])
    low, high = _INT_RANGES[field.type]
    return st.one_of(st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2]), st.integers(low, high))


@functools.cache
def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with any subset of their fields set to hostile values."""
    message_class = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(message_class())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            key, value = message_type.fields_by_name["key"], message_type.fields_by_name["value"]
            value_strategy = messages(value.message_type, depth + 1) if value.message_type else _scalar(value)
            optional[field.name] = st.dictionaries(_scalar(key), value_strategy, max_size=2)
            continue
        one = messages(message_type, depth + 1) if message_type is not None else _scalar(field)
        is_repeated = field.is_repeated
        optional[field.name] = st.lists(one, max_size=2) if is_repeated else one
    return st.fixed_dictionaries({}, optional=optional).map(functools.partial(_build, message_class))


def _build(message_class: type[Message], values: dict[str, Any]) -> Message:
    message = message_class()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def call(channel: grpc.Channel, service: ServiceDescriptor, method: MethodDescriptor, request: Message) -> Any:
    """The reply (a list of them for a server stream); raises grpc.RpcError."""
    path = f"/{service.full_name}/{method.name}"
    reply_class = GetMessageClass(method.output_type)
    serialize, parse = type(request).SerializeToString, reply_class.FromString
    if method.server_streaming:
        stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=parse)
        return list(stream(request, timeout=RPC_TIMEOUT))
    unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=parse)
    return unary(request, timeout=RPC_TIMEOUT)


@pytest.fixture(scope="module")
def workloads(test_images: TestImages) -> Iterator[Workloads]:
    with node_with_images(test_images) as node, workloads_on(node) as running:
        yield running


def _is_pullable(image: str) -> bool:
    try:
        parse_reference(image)
    except InvalidReference:
        return False
    return True


def _names_an_image(workloads: Workloads, image: str) -> bool:
    try:
        reply = workloads.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)))
    except grpc.RpcError:
        return False
    return reply.HasField("image")


def _counts(workloads: Workloads) -> tuple[int, int]:
    pods = workloads.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    containers = workloads.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
    return len(pods), len(containers)


def _remove_what_was_made(workloads: Workloads, method: MethodDescriptor, reply: Any) -> None:
    """A request that happened to be valid made something; only refused ones must leave nothing."""
    if method.name == "RunPodSandbox":
        workloads.remove_pod(reply.pod_sandbox_id)
    elif method.name == "CreateContainer":
        workloads.remove(reply.container_id)


@pytest.mark.parametrize(("service", "method"), METHODS)
def test_every_rpc_answers_hostile_messages_properly_and_leaves_nothing(
    workloads: Workloads, service: ServiceDescriptor, method: MethodDescriptor
) -> None:
    daemon = workloads.node.daemon
    before, counts = take(daemon), _counts(workloads)
    answers: dict[str, int] = {}

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(request=messages(method.input_type))
    def sweep(request: Message) -> None:
        if method.name == "PullImage":
            assume(not _is_pullable(request.image.image))  # a valid name would go out to a registry
        if method.name == "RemoveImage":
            assume(not _names_an_image(workloads, request.image.image))  # the test images stay
        try:
            reply = call(workloads.channel, service, method, request)
        except grpc.RpcError as error:
            code = error.code()
            assert code not in IMPROPER, f"{method.name} answered {code}: {error.details()} to {request!r:.2000}"
            answers[code.name] = answers.get(code.name, 0) + 1
            return
        answers["OK"] = answers.get("OK", 0) + 1
        _remove_what_was_made(workloads, method, reply)

    sweep()
    workloads.runtime.Version(api_pb2.VersionRequest(), timeout=RPC_TIMEOUT)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert _counts(workloads) == counts
    wait_for_no_leaks(daemon, before)
    print(method.name, answers)


def _mutations(workloads: Workloads) -> list[tuple[str, api_pb2.PodSandboxConfig]]:
    def mutated(**fields: Any) -> api_pb2.PodSandboxConfig:
        config = workloads.pod_config("hostile")
        for path, value in fields.items():
            *parents, last = path.split("__")
            target: Any = config
            for part in parents:
                target = getattr(target, part)
            setattr(target, last, value)
        return config

    return [
        ("config.metadata.namespace", mutated(metadata__namespace="/etc", log_directory="")),
        ("config.metadata.namespace", mutated(metadata__namespace="..", log_directory="")),
        ("config.metadata.namespace", mutated(metadata__namespace="a\0b", log_directory="")),
        ("config.metadata.name", mutated(metadata__name="x" * 254)),
        ("config.metadata.uid", mutated(metadata__uid="u" * 129)),
        ("config.log_directory", mutated(log_directory="relative/logs")),
        ("config.log_directory", mutated(log_directory="/var/log/pods/../../../etc")),
        ("config.log_directory", mutated(log_directory="/var/log/\0")),
    ]


def test_pod_metadata_and_log_directory_never_reach_the_filesystem(workloads: Workloads) -> None:
    daemon = workloads.node.daemon
    before, counts = take(daemon), _counts(workloads)
    for field, config in _mutations(workloads):
        with pytest.raises(grpc.RpcError) as refused:
            workloads.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert field in refused.value.details()
    assert _counts(workloads) == counts
    wait_for_no_leaks(daemon, before)


def test_a_relative_host_path_is_refused_before_anything_is_made(workloads: Workloads, busybox: str) -> None:
    pod = workloads.pod("relative-mount")
    daemon = workloads.node.daemon
    assert daemon.proc is not None
    daemon_cwd = Path(os.readlink(f"/proc/{daemon.proc.pid}/cwd"))
    before, counts = take(daemon), _counts(workloads)
    config = container_config("c", busybox, "true", mounts=[api_pb2.Mount(container_path="/data", host_path="rel/d")])
    with pytest.raises(grpc.RpcError) as refused:
        workloads.create(pod, config)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "mounts[0].host_path" in refused.value.details()
    assert not (daemon_cwd / "rel").exists()
    assert _counts(workloads) == counts
    wait_for_no_leaks(daemon, before)


@pytest.mark.parametrize(
    ("rpc", "request_message"),
    [
        ("ImageStatus", api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="sha256:zz"))),
        ("ImageStatus", api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="busybox@sha256:abc"))),
        ("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image="sha256:" + "a" * 65))),
        ("ListImages", api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="A:b")))),
        ("PullImage", api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="sha256:" + "a" * 64))),
        (
            "PullImage",
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="localhost:1/x"), auth=api_pb2.AuthConfig(auth="!")),
        ),
    ],
)
def test_malformed_image_fields_are_invalid_argument(workloads: Workloads, rpc: str, request_message: Message) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        getattr(workloads.images, rpc)(request_message, timeout=RPC_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "image" in refused.value.details() or "auth" in refused.value.details()


def test_a_bad_pod_cidr_is_invalid_argument(workloads: Workloads) -> None:
    request = api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr="not-a-cidr"))
    )
    with pytest.raises(grpc.RpcError) as refused:
        workloads.runtime.UpdateRuntimeConfig(request, timeout=RPC_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod_cidr" in refused.value.details()


SWEEP = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def _answer(run: Any, what: str, request: Message) -> Any:
    """The reply, or None when refused with a proper status."""
    try:
        return run()
    except grpc.RpcError as error:
        assert error.code() not in IMPROPER, f"{what} answered {error.code()}: {error.details()} to {request!r:.2000}"
        return None


def test_valid_pods_with_hostile_fields_merged_in(workloads: Workloads) -> None:
    """Deeper than random messages reach: a valid pod with some of its fields overwritten."""
    daemon = workloads.node.daemon
    before, counts = take(daemon), _counts(workloads)

    @SWEEP
    @given(hostile=messages(api_pb2.PodSandboxConfig.DESCRIPTOR))
    def sweep(hostile: api_pb2.PodSandboxConfig) -> None:
        config = workloads.pod_config("sweep")
        config.MergeFrom(hostile)
        request = api_pb2.RunPodSandboxRequest(config=config)
        reply = _answer(lambda: workloads.runtime.RunPodSandbox(request, timeout=RPC_TIMEOUT), "RunPodSandbox", request)
        if reply is not None:
            workloads.remove_pod(reply.pod_sandbox_id)

    sweep()
    assert _counts(workloads) == counts
    wait_for_no_leaks(daemon, before)


def test_valid_containers_with_hostile_fields_merged_in(workloads: Workloads, busybox: str) -> None:
    daemon = workloads.node.daemon
    before, counts = take(daemon), _counts(workloads)
    pod = workloads.pod("hostile-containers")

    @SWEEP
    @given(hostile=messages(api_pb2.ContainerConfig.DESCRIPTOR))
    def sweep(hostile: api_pb2.ContainerConfig) -> None:
        config = container_config("c", busybox, "true")
        config.MergeFrom(hostile)
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
        reply = _answer(
            lambda: workloads.runtime.CreateContainer(request, timeout=RPC_TIMEOUT), "CreateContainer", request
        )
        if reply is not None:
            workloads.remove(reply.container_id)

    sweep()
    assert workloads.list() == []
    workloads.remove_pod(pod.id)
    assert _counts(workloads) == counts
    wait_for_no_leaks(daemon, before)


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("config.metadata.name", {"metadata": api_pb2.ContainerMetadata(name="c\0")}),
        ("config.metadata.name", {"metadata": api_pb2.ContainerMetadata(name="../c")}),
        ("config.log_path", {"log_path": "c\0.log"}),
        ("config.log_path", {"log_path": "c\x80.log"}),
        ("config.metadata.name", {"metadata": api_pb2.ContainerMetadata(name=" ")}),
        ("config.stop_signal", {"stop_signal": -1}),
        ("config.log_path", {"log_path": " "}),
        ("config.log_path", {"log_path": "\u00a1"}),
        ("linux.resources.cpu_period", {"linux": {"resources": {"cpu_period": -1}}}),
        ("linux.resources.memory_limit_in_bytes", {"linux": {"resources": {"memory_limit_in_bytes": -5}}}),
    ],
)
def test_container_name_and_log_path_are_checked(
    workloads: Workloads, busybox: str, field: str, fields: dict[str, Any]
) -> None:
    daemon = workloads.node.daemon
    before, counts = take(daemon), _counts(workloads)
    pod = workloads.pod("checked-fields")
    config = container_config("c", busybox, "true")
    config.MergeFrom(api_pb2.ContainerConfig(**fields))
    try:
        with pytest.raises(grpc.RpcError) as refused:
            workloads.create(pod, config)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert field in refused.value.details()
    finally:
        for container in workloads.list():
            workloads.remove(container.id)
        workloads.remove_pod(pod.id)
    assert _counts(workloads) == counts
    wait_for_no_leaks(daemon, before)

"""Fields a kubelet copies from what users wrote: each malformed one is INVALID_ARGUMENT naming it."""

from __future__ import annotations

import base64
import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.errors import InvalidArgument
from pycri.ids import find_by_id
from pycri.image.reference import check_image_field
from pycri.request_fields import check_absolute_path, check_name, check_relative_path
from pycri.server.image.pull_image import _check_auth
from pycri.server.runtime.update_runtime_config import check_pod_cidr

pytestmark = pytest.mark.unit

IMAGE_ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize("value", ["web-0", "kube-system", "0e0f4fdb-7d0e-4c42-9f4e-3b54d3b8a1c7", "a.b", "x" * 253])
def test_names_a_kubelet_sends_are_accepted(value: str) -> None:
    check_name(value, "config.metadata.name")


@pytest.mark.parametrize(
    "value", ["", "/", "a/b", "..", ".", "a..b", "a\0b", "a\nb", "a\x7fb", "a\x80b", " ", "a b", "a;b", "x" * 254]
)
def test_names_that_could_leave_their_directory_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="^config.metadata.name"):
        check_name(value, "config.metadata.name")


@given(st.text(max_size=300))
def test_a_name_that_passes_is_one_path_component(value: str) -> None:
    try:
        check_name(value, "name")
    except InvalidArgument:
        return
    assert "/" not in value and "\0" not in value and value not in (".", "..") and 0 < len(value) <= 253


@pytest.mark.parametrize("value", ["/var/log/pods/x", "/"])
def test_absolute_paths(value: str) -> None:
    check_absolute_path(value, "config.log_directory")


@pytest.mark.parametrize("value", ["", "var/log", "/var/../etc", "/a\0b", "/" + "a" * 4095])
def test_paths_that_are_not_absolute_or_climb_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="^config.log_directory"):
        check_absolute_path(value, "config.log_directory")


@pytest.mark.parametrize("value", ["/etc/passwd", "../x", "a/../../x", "a\0", "a\x80", " "])
def test_relative_paths_that_escape_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="^config.log_path"):
        check_relative_path(value, "config.log_path")


def test_relative_path_inside_is_accepted() -> None:
    check_relative_path("web/0.log", "config.log_path")


@pytest.mark.parametrize(
    "text", ["busybox", "busybox:1.36", f"busybox@{IMAGE_ID}", IMAGE_ID, "ab" * 32, "3f57d9401f8d"]
)
def test_image_fields_that_name_something(text: str) -> None:
    check_image_field(text, "image.image")


@pytest.mark.parametrize(
    "text", ["", "sha256:zz", "sha256:" + "ab" * 33, "busybox@sha256:abc", "busybox@md5:00", "Busy", "a\0b", "x" * 600]
)
def test_malformed_image_fields_name_the_field(text: str) -> None:
    with pytest.raises(InvalidArgument, match="^image.image"):
        check_image_field(text, "image.image")


@pytest.mark.parametrize("cidr", ["", "10.244.1.0/24", "10.244.1.0/24,fd00:1::/64", "10.244.1.0/24, fd00:1::/64"])
def test_pod_cidrs_a_kubelet_sends(cidr: str) -> None:
    check_pod_cidr(cidr)


@pytest.mark.parametrize("cidr", ["10.244.1.7/24", "banana", "10.0.0.0/33", "/", "::/129", "10.0.0.0/8\0"])
def test_bad_pod_cidrs_name_the_field(cidr: str) -> None:
    with pytest.raises(InvalidArgument, match="^runtime_config.network_config.pod_cidr"):
        check_pod_cidr(cidr)


def test_good_auth_passes() -> None:
    _check_auth(api_pb2.AuthConfig(auth=base64.b64encode(b"user:secret").decode(), registry_token="t0ken"))


@pytest.mark.parametrize(
    ("auth", "field"),
    [
        (api_pb2.AuthConfig(auth="not base64!"), "auth.auth"),
        (api_pb2.AuthConfig(auth=base64.b64encode(b"no colon").decode()), "auth.auth"),
        (api_pb2.AuthConfig(auth=base64.b64encode(b"\xff:\xfe").decode()), "auth.auth"),
        (api_pb2.AuthConfig(registry_token="a\r\nX-Injected: 1"), "auth.registry_token"),
        (api_pb2.AuthConfig(username="u\0"), "auth.username"),
    ],
)
def test_bad_auth_names_the_field(auth: api_pb2.AuthConfig, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{field}"):
        _check_auth(auth)


def test_lookup_by_id_is_exact_then_unique_prefix_never_a_substring() -> None:
    objects = {"ab12": "first", "ab12ff": "second", "cdab12": "third"}
    find = functools.partial(find_by_id, field="container_id", by_full_id=objects.get, all_ids=objects.keys)
    assert find("ab12") == "first"  # exact, though it is also a prefix of another id
    assert find("ab12f") == "second"
    assert find("cd") == "third"
    assert find("b12") is None  # inside two ids, at the start of none
    assert find("12ff") is None
    with pytest.raises(InvalidArgument, match="ambiguous"):
        find("ab")
    with pytest.raises(InvalidArgument, match="container_id is required"):
        find("")

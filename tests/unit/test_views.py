"""Replies joined from pre-serialised entries are the replies protobuf itself would write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.state.views import int64_field, repeated_field

pytestmark = pytest.mark.unit

FIELD = api_pb2.ListContainersResponse.CONTAINERS_FIELD_NUMBER


@given(
    st.lists(st.tuples(st.text(max_size=300), st.dictionaries(st.text(max_size=20), st.text(max_size=40))), max_size=8)
)
def test_joined_entries_are_the_response(entries: list[tuple[str, dict[str, str]]]) -> None:
    containers = [api_pb2.Container(id=name, labels=labels) for name, labels in entries]
    joined = b"".join(repeated_field(FIELD, container) for container in containers)
    assert api_pb2.ListContainersResponse.FromString(joined) == api_pb2.ListContainersResponse(containers=containers)


def test_lengths_past_one_and_two_varint_bytes() -> None:
    for size in (0, 127, 128, 16_383, 16_384, 300_000):
        container = api_pb2.Container(id="x" * size)
        assert api_pb2.ListContainersResponse.FromString(repeated_field(FIELD, container)).containers == [container]


@given(st.text(max_size=200), st.integers(min_value=0, max_value=2**63 - 1))
def test_status_and_timestamp_are_the_response(sandbox_id: str, timestamp: int) -> None:
    status = api_pb2.PodSandboxStatus(id=sandbox_id, state=api_pb2.PodSandboxState.SANDBOX_READY)
    encoded = repeated_field(api_pb2.PodSandboxStatusResponse.STATUS_FIELD_NUMBER, status) + int64_field(
        api_pb2.PodSandboxStatusResponse.TIMESTAMP_FIELD_NUMBER, timestamp
    )
    expected = api_pb2.PodSandboxStatusResponse(status=status, timestamp=timestamp)
    assert api_pb2.PodSandboxStatusResponse.FromString(encoded) == expected

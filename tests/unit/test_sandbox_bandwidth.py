"""Kubernetes quantities and the pod bandwidth annotations."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.sandbox.bandwidth import (
    EGRESS_ANNOTATION,
    INGRESS_ANNOTATION,
    UNLIMITED_BURST,
    BadQuantity,
    bandwidth_from_annotations,
    parse_quantity,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10M", 10_000_000),
        ("1.5M", 1_500_000),
        ("100k", 100_000),
        ("1Mi", 1_048_576),
        ("1.5Gi", 1_610_612_736),
        ("2e6", 2_000_000),
        ("2E3", 2_000),
        ("1000", 1000),
        ("1500m", 2),  # rounded up, as Kubernetes' Value() does
        (".5k", 500),
        (" 5k ", 5000),
    ],
)
def test_quantities(text: str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "M", "10 M", "10MB", "1Ki5", "ten", "1e99999999", "1e", "--1"])
def test_not_quantities(text: str) -> None:
    with pytest.raises(BadQuantity):
        parse_quantity(text)


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["", "k", "M", "G", "Ki", "Mi", "Gi"]))
def test_integer_with_suffix(number: int, suffix: str) -> None:
    multiplier = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[suffix]
    if number * multiplier > 2**63:
        with pytest.raises(BadQuantity):
            parse_quantity(f"{number}{suffix}")
    else:
        assert parse_quantity(f"{number}{suffix}") == number * multiplier


@given(st.text(max_size=30))
def test_any_text_parses_or_is_refused(text: str) -> None:
    try:
        value = parse_quantity(text)
    except BadQuantity:
        return
    assert isinstance(value, int)
    assert abs(value) <= Decimal(2) ** 63 + 1


def test_no_annotations_no_limits() -> None:
    assert bandwidth_from_annotations({"other": "1"}) is None


def test_limits_with_unlimited_bursts() -> None:
    limits = bandwidth_from_annotations({INGRESS_ANNOTATION: "10M", EGRESS_ANNOTATION: "1Mi"})
    assert limits is not None
    assert (limits.ingress_rate, limits.ingress_burst) == (10_000_000, UNLIMITED_BURST)
    assert (limits.egress_rate, limits.egress_burst) == (1_048_576, UNLIMITED_BURST)


def test_one_direction() -> None:
    limits = bandwidth_from_annotations({EGRESS_ANNOTATION: "5M"})
    assert limits is not None
    assert (limits.ingress_rate, limits.ingress_burst, limits.egress_rate) == (0, 0, 5_000_000)


@pytest.mark.parametrize("value", ["999", "2P", "fast"])
def test_unreasonable_or_bad_rates_name_the_annotation(value: str) -> None:
    with pytest.raises(BadQuantity, match=INGRESS_ANNOTATION):
        bandwidth_from_annotations({INGRESS_ANNOTATION: value})

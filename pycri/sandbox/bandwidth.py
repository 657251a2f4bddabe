"""Pod bandwidth limits from the kubernetes.io/{ingress,egress}-bandwidth annotations."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal

from pycri.network.cni import BandwidthLimits

INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
# Kubernetes refuses rates outside these bounds (bits per second); so does pycri.
MIN_RATE = 1_000
MAX_RATE = 10**15
# A rate needs a burst for the CNI bandwidth plugin; as in containerd, the largest one
# it takes, so the pod is shaped by its rate alone.
UNLIMITED_BURST = 2**32 - 1

_MULTIPLIERS: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal(10) ** -9,
    "u": Decimal(10) ** -6,
    "m": Decimal(10) ** -3,
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
# Quantities are 64-bit in Kubernetes; checking the range first keeps huge exponents cheap.
_MAX_QUANTITY = Decimal(2) ** 63
_MAX_EXPONENT = 30
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:([KMGTPE]i|[numkMGTPE])|[eE]([+-]?[0-9]+))?")


class BadQuantity(ValueError):
    """A string that is not a Kubernetes quantity, or a rate out of bounds."""


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("10M", "1.5Gi", "2e6", "500k") as an integer, rounded up."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise BadQuantity(f"{text!r} is not a quantity (examples: 10M, 1.5Gi, 500k)")
    number, suffix, exponent = match.groups()
    if exponent and abs(int(exponent)) > _MAX_EXPONENT:
        raise BadQuantity(f"{text!r} is out of range")
    value = Decimal(number) * (Decimal(10) ** int(exponent) if exponent else _MULTIPLIERS[suffix or ""])
    if abs(value) > _MAX_QUANTITY:
        raise BadQuantity(f"{text!r} is out of range")
    return math.ceil(value)


def parse_rate(text: str) -> int:
    rate = parse_quantity(text)
    if rate < MIN_RATE:
        raise BadQuantity(f"{text!r} is unreasonably small (< 1kbit)")
    if rate > MAX_RATE:
        raise BadQuantity(f"{text!r} is unreasonably large (> 1Pbit)")
    return rate


def bandwidth_from_annotations(annotations: Mapping[str, str]) -> BandwidthLimits | None:
    """The pod's limits, or None when it has neither annotation; BadQuantity names the annotation at fault."""
    rates: dict[str, int] = {}
    for annotation in (INGRESS_ANNOTATION, EGRESS_ANNOTATION):
        if annotation in annotations:
            try:
                rates[annotation] = parse_rate(annotations[annotation])
            except BadQuantity as exc:
                raise BadQuantity(f"annotation {annotation}: {exc}") from None
    if not rates:
        return None
    ingress = rates.get(INGRESS_ANNOTATION, 0)
    egress = rates.get(EGRESS_ANNOTATION, 0)
    return BandwidthLimits(
        ingress_rate=ingress,
        ingress_burst=UNLIMITED_BURST if ingress else 0,
        egress_rate=egress,
        egress_burst=UNLIMITED_BURST if egress else 0,
    )

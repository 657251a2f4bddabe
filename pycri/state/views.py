"""CRI messages built from immutable records, rebuilt only when a record is replaced.

List calls at node density would otherwise build hundreds of messages per call from
records that have not changed since the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message


class _Record(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Record)
M = TypeVar("M")


def repeated_field(number: int, message: Message) -> bytes:
    """`message` encoded as one element of the repeated message field `number` of its parent:
    such elements joined are the parent's bytes when that field is all it carries. A singular
    message field is encoded the same way."""
    body = message.SerializeToString()
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def int64_field(number: int, value: int) -> bytes:
    """The int64 field `number` holding `value` (>= 0), as its parent's bytes carry it."""
    return _varint(number << 3) + _varint(value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class ViewCache(Generic[R, M]):
    def __init__(self, build: Callable[[R], M]) -> None:
        self._build = build
        self._views: dict[str, tuple[R, M]] = {}

    def get(self, record: R) -> M:
        cached = self._views.get(record.id)
        if cached is None or cached[0] is not record:
            cached = self._views[record.id] = (record, self._build(record))
        return cached[1]

    def keep_only(self, live_ids: Collection[str]) -> None:
        """Forget the views of records that are gone, once they outnumber the live ones."""
        if len(self._views) > 2 * len(live_ids) + 64:
            self._views = {key: view for key, view in self._views.items() if key in live_ids}

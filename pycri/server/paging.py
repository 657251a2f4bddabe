"""The Stream* RPCs: a List reply cut into pages, for nodes with many objects."""

from collections.abc import Iterator, Sequence
from typing import TypeVar

PAGE_SIZE = 100

T = TypeVar("T")


def pages(items: Sequence[T], size: int = PAGE_SIZE) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

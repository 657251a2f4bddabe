"""Object IDs as users type them: full, or a unique prefix (as containerd accepts)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from pycri.errors import InvalidArgument

T = TypeVar("T")


class AmbiguousId(LookupError):
    """A prefix that names more than one object."""


def resolve_id(prefix: str, ids: Iterable[str]) -> str | None:
    """The one id equal to or starting with `prefix` (None when none does); AmbiguousId if several do."""
    matches = [candidate for candidate in ids if candidate.startswith(prefix)]
    if len(matches) > 1:
        if prefix in matches:
            return prefix
        raise AmbiguousId(f"id prefix {prefix!r} is ambiguous: it matches {len(matches)} ids")
    return matches[0] if matches else None


def find_by_id(
    object_id: str, field: str, by_full_id: Callable[[str], T | None], all_ids: Callable[[], Iterable[str]]
) -> T | None:
    """The object with this id or unique id prefix, None when there is none; InvalidArgument
    for an empty id or a prefix several objects share."""
    if not object_id:
        raise InvalidArgument(f"{field} is required")
    found = by_full_id(object_id)
    if found is not None:
        return found
    try:
        full = resolve_id(object_id, all_ids())
    except AmbiguousId as exc:
        raise InvalidArgument(str(exc)) from None
    return None if full is None else by_full_id(full)


def find_quietly(find: Callable[[str], T | None], object_id: str) -> T | None:
    """For list filters: an ambiguous prefix selects nothing rather than failing (as containerd)."""
    try:
        return find(object_id)
    except InvalidArgument:
        return None

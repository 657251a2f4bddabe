"""Object IDs as users type them: full, or a unique prefix (as containerd accepts)."""

from __future__ import annotations

from collections.abc import Iterable


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

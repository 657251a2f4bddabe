"""Ids as users type them: full, or a unique prefix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.ids import AmbiguousId, resolve_id

pytestmark = pytest.mark.unit


def test_resolve_id() -> None:
    ids = ["abc123", "abd456", "f00"]
    assert resolve_id("abc", ids) == "abc123"
    assert resolve_id("f00", ids) == "f00"
    assert resolve_id("zzz", ids) is None
    with pytest.raises(AmbiguousId, match="matches 2"):
        resolve_id("ab", ids)


def test_exact_id_wins_over_longer_ids() -> None:
    assert resolve_id("ab", ["ab", "abc"]) == "ab"


@given(st.lists(st.text(alphabet="0123456789abcdef", min_size=1, max_size=6), unique=True), st.text(max_size=4))
def test_resolve_id_finds_only_ids_with_the_prefix(ids: list[str], prefix: str) -> None:
    try:
        found = resolve_id(prefix, ids)
    except AmbiguousId:
        assert sum(i.startswith(prefix) for i in ids) > 1
        return
    if found is None:
        assert not any(i.startswith(prefix) for i in ids)
    else:
        assert found.startswith(prefix) and found in ids

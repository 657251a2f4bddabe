"""One-time tokens for streaming URLs: each names a request, works once, and expires."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from pycri.errors import ResourceExhausted

# As kubelet's request cache: a bound on URLs handed out and not used yet.
MAX_PENDING_TOKENS = 1000

T = TypeVar("T")


class TokenCache(Generic[T]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()  # token -> (expiry, request), oldest first

    def insert(self, request: T) -> str:
        self._drop_expired()
        if len(self._entries) >= MAX_PENDING_TOKENS:
            raise ResourceExhausted(f"{MAX_PENDING_TOKENS} streaming URLs are waiting to be used; try again later")
        token = secrets.token_urlsafe(24)
        self._entries[token] = (self._clock() + self._ttl, request)
        return token

    def consume(self, token: str) -> T | None:
        """The request behind `token`, once; None when unknown, used or expired."""
        entry = self._entries.pop(token, None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def _drop_expired(self) -> None:
        now = self._clock()
        while self._entries:
            token, (expiry, _) = next(iter(self._entries.items()))
            if expiry > now:
                return
            del self._entries[token]

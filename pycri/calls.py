"""How mutating calls on one object are serialised, and what happens when a caller gives up.

Work on an object runs as a task of its own under that object's lock. A caller that is
cancelled (kubelet's deadline passed, the connection dropped) stops waiting, but the task
goes on and keeps the lock until the work is done: a second call on the same object waits
for it instead of meeting half-done state.

RunPodSandbox and CreateContainer are keyed by the name they reserve. When kubelet's deadline
passes while pycri is still working, kubelet retries with the same metadata; the retry gets
the result of the first call. A result nobody comes back for is removed after a grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ObjectLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work()` under `key`'s lock in a task that outlives a cancelled caller."""

        async def locked() -> T:
            async with self.lock(key):
                return await work()

        task = asyncio.ensure_future(locked())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    def forget(self, key: str) -> None:
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    async def drain(self) -> None:
        """Wait for work whose callers gave up (at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass
class _Pending(Generic[T]):
    task: asyncio.Task[T]
    abandoned: bool = False
    reaper: asyncio.TimerHandle | None = field(default=None, repr=False)


class PendingCreates(Generic[T]):
    """Creations in flight, by reserved name, and results waiting for a retry."""

    def __init__(self, grace_seconds: float, remove: Callable[[T], Awaitable[None]], what: str) -> None:
        self._grace = grace_seconds
        self._remove = remove
        self._what = what
        self._pending: dict[str, _Pending[T]] = {}

    async def create(self, name: str, work: Callable[[], Awaitable[T]]) -> T:
        pending = self._pending.get(name)
        if pending is not None:
            log.info(f"{self._what} retried while in flight or unclaimed", extra={"fields": {"name": name}})
            result = await asyncio.shield(pending.task)
            self._claim(name, pending)
            return result
        pending = _Pending(asyncio.ensure_future(work()))
        self._pending[name] = pending
        try:
            result = await asyncio.shield(pending.task)
        except asyncio.CancelledError:
            if pending.task.done() or pending.task.cancelled():
                self._pending.pop(name, None)
                raise
            pending.abandoned = True
            pending.task.add_done_callback(lambda task: self._keep_for_retry(name, pending, task))
            raise
        except BaseException:
            self._pending.pop(name, None)
            raise
        self._claim(name, pending)
        return result

    def _claim(self, name: str, pending: _Pending[T]) -> None:
        if pending.reaper is not None:
            pending.reaper.cancel()
        if self._pending.get(name) is pending:
            del self._pending[name]

    def _keep_for_retry(self, name: str, pending: _Pending[T], task: asyncio.Task[T]) -> None:
        if self._pending.get(name) is not pending:
            return  # a retry claimed it
        if task.cancelled() or task.exception() is not None:
            del self._pending[name]
            return
        loop = asyncio.get_running_loop()
        pending.reaper = loop.call_later(self._grace, lambda: asyncio.ensure_future(self._reap(name, pending)))
        log.info(f"{self._what} finished after its caller gave up; kept for a retry", extra={"fields": {"name": name}})

    async def _reap(self, name: str, pending: _Pending[T]) -> None:
        if self._pending.get(name) is not pending:
            return
        del self._pending[name]
        result = pending.task.result()
        log.warning(f"removing an unclaimed {self._what}", extra={"fields": {"name": name, "grace_s": self._grace}})
        try:
            await self._remove(result)
        except Exception as exc:  # noqa: BLE001 - kubelet's garbage collection gets another go at it
            log.error(f"removing an unclaimed {self._what} failed", extra={"fields": {"name": name, "error": str(exc)}})

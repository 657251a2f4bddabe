"""A stack of undo steps: each step of a half-done setup pushes how to reverse itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BlockingStep = Callable[[], object]
AsyncStep = Callable[[], Awaitable[object]]


@dataclass
class UndoStack:
    owner: str  # named in the logs
    _steps: list[tuple[str, BlockingStep | None, AsyncStep | None]] = field(default_factory=list)

    def push(self, what: str, step: BlockingStep) -> None:
        """A blocking step; safe to call from a worker thread."""
        self._steps.append((what, step, None))

    def push_async(self, what: str, step: AsyncStep) -> None:
        self._steps.append((what, None, step))

    async def unwind(self) -> list[BaseException]:
        """Run every step, newest first; a step that fails is logged and the rest still run."""
        failures: list[BaseException] = []
        while self._steps:
            what, blocking, awaitable = self._steps.pop()
            try:
                if blocking is not None:
                    await asyncio.to_thread(blocking)
                elif awaitable is not None:
                    await awaitable()
            except Exception as exc:  # noqa: BLE001 - logged; the remaining steps must still run
                log.error("undo step failed", extra={"fields": {"owner": self.owner, "step": what, "error": str(exc)}})
                failures.append(exc)
        return failures

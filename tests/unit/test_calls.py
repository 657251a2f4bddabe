"""Call locks that outlive a cancelled caller, and creations handed to kubelet's retry."""

from __future__ import annotations

import asyncio

import pytest

from pycri.calls import ObjectLocks, PendingCreates

pytestmark = pytest.mark.unit


async def test_a_cancelled_caller_does_not_release_the_lock_early() -> None:
    locks = ObjectLocks()
    release = asyncio.Event()
    order: list[str] = []

    async def slow() -> None:
        order.append("first started")
        await release.wait()
        order.append("first done")

    async def second() -> None:
        order.append("second ran")

    caller = asyncio.ensure_future(locks.run("pod", slow))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    follower = asyncio.ensure_future(locks.run("pod", second))
    await asyncio.sleep(0.01)
    assert order == ["first started"]  # the second call waits for the abandoned work
    release.set()
    await follower
    assert order == ["first started", "first done", "second ran"]


async def test_a_retry_gets_the_result_of_the_abandoned_call() -> None:
    removed: list[str] = []

    async def remove(result: str) -> None:
        removed.append(result)

    pending: PendingCreates[str] = PendingCreates(60, remove, "pod sandbox")
    release = asyncio.Event()
    made = 0

    async def work() -> str:
        nonlocal made
        made += 1
        await release.wait()
        return "sandbox-1"

    first = asyncio.ensure_future(pending.create("web_default_uid_0", work))
    await asyncio.sleep(0.01)
    first.cancel()  # kubelet's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    await asyncio.sleep(0.01)
    assert await pending.create("web_default_uid_0", work) == "sandbox-1"
    assert made == 1 and removed == []


async def test_an_unclaimed_result_is_removed_after_the_grace_period() -> None:
    removed: list[str] = []

    async def remove(result: str) -> None:
        removed.append(result)

    pending: PendingCreates[str] = PendingCreates(0.01, remove, "container")
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "container-1"

    first = asyncio.ensure_future(pending.create("app", work))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    for _ in range(200):
        if removed:
            break
        await asyncio.sleep(0.01)
    assert removed == ["container-1"]


async def test_a_failure_reaches_the_caller_and_is_not_kept() -> None:
    async def remove(result: str) -> None:
        raise AssertionError("nothing to remove")

    pending: PendingCreates[str] = PendingCreates(60, remove, "container")

    async def failing() -> str:
        raise ValueError("no image")

    with pytest.raises(ValueError, match="no image"):
        await pending.create("app", failing)

    async def working() -> str:
        return "container-2"

    assert await pending.create("app", working) == "container-2"

"""The CRIU probe a daemon keeps (checkpoint_criu.Criu): asked once, by the first call, shared by
the calls that come meanwhile, each daemon's its own and usable from whichever event loop it runs
on. The host's criu is stood in for by a counting probe: what CRIU answers is not at issue here."""

from __future__ import annotations

import asyncio

import pytest

from pycri.container import checkpoint_criu
from pycri.container.checkpoint_criu import Criu, CriuStatus
from pycri.errors import FailedPrecondition

pytestmark = pytest.mark.unit

UNUSABLE = CriuStatus(False, "`criu check` failed: no vdso")


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the probes; each takes a few turns of the loop, so concurrent callers meet it."""
    counted: list[int] = []

    async def probe() -> CriuStatus:
        counted.append(1)
        for _ in range(3):
            await asyncio.sleep(0)
        return UNUSABLE

    monkeypatch.setattr(checkpoint_criu, "probe_criu", probe)
    return counted


async def test_concurrent_first_calls_share_one_probe(probes: list[int]) -> None:
    criu = Criu()
    answers = await asyncio.gather(*(criu.status() for _ in range(5)))
    assert answers == [UNUSABLE] * 5 and len(probes) == 1
    with pytest.raises(FailedPrecondition, match="checkpoint x: CRIU is not usable on this host: `criu check`"):
        await criu.require("checkpoint x")
    assert len(probes) == 1


def test_each_daemon_probes_for_itself_on_its_own_loop(probes: list[int]) -> None:
    # Two daemons one after the other in one process (as the tests run them), each on a loop of
    # its own, each with callers contending for the probe.
    async def first_calls(criu: Criu) -> list[CriuStatus]:
        return await asyncio.gather(criu.status(), criu.status())

    assert asyncio.run(first_calls(Criu())) == [UNUSABLE] * 2
    assert asyncio.run(first_calls(Criu())) == [UNUSABLE] * 2
    assert len(probes) == 2

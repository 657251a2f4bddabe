"""Unpacks run on the snapshot store's own bounded pool, and a cancelled one stops and cleans up
before its caller's cancellation goes on, unless another caller still waits for it."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from pycri.image import snapshots
from pycri.image.snapshots import SnapshotStore
from tests.support.hostile_tars import zero_file_layer
from tests.support.oci_images import OCI_LAYER_TYPES, file_entry, make_layer

pytestmark = pytest.mark.unit

GZIP = OCI_LAYER_TYPES["gzip"]
ZEROS = 1024 * 1024 * 1024


def test_unpacks_run_on_the_store_pool_within_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    running = peak = 0
    lock = threading.Lock()
    real_apply = snapshots.apply_layer

    def recording_apply(*args: Any) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.append(threading.current_thread().name)
        try:
            return real_apply(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(snapshots, "apply_layer", recording_apply)
    store = SnapshotStore(tmp_path / "root", unpack_workers=2)
    layers = [make_layer([file_entry(f"f{n}", os.urandom(200_000))]) for n in range(6)]

    async def unpack_all() -> None:
        jobs = []
        for n, layer in enumerate(layers):
            blob = tmp_path / f"blob{n}"
            blob.write_bytes(layer.data)
            jobs.append(store.unpack(layer.diff_id, blob, GZIP, layer.diff_id))
        await asyncio.gather(*jobs)

    asyncio.run(unpack_all())
    store.close()
    assert sorted(store.list()) == sorted(layer.diff_id for layer in layers)
    assert len(threads) == 6 and all(name.startswith("unpack") for name in threads)
    assert peak <= 2


@pytest.fixture(scope="module")
def zeros_blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    layer = zero_file_layer(ZEROS)
    blob = tmp_path_factory.mktemp("zeros") / "blob"
    blob.write_bytes(layer.blob)
    return blob, layer.diff_id


async def until_unpacking(store_dir: Path) -> None:
    while not any(entry.name.startswith("tmp-") for entry in store_dir.iterdir()):
        await asyncio.sleep(0.005)


def test_a_cancelled_unpack_is_gone_when_the_cancellation_arrives(tmp_path: Path, zeros_blob: tuple[Path, str]) -> None:
    blob, diff_id = zeros_blob
    store = SnapshotStore(tmp_path / "root")

    async def cancel_mid_unpack() -> None:
        unpack = asyncio.ensure_future(store.unpack(diff_id, blob, GZIP, diff_id))
        await until_unpacking(tmp_path / "root" / "snapshots")
        unpack.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unpack
        assert os.listdir(tmp_path / "root" / "snapshots") == []

    asyncio.run(cancel_mid_unpack())
    store.close()


def test_an_unpack_another_caller_waits_for_goes_on(tmp_path: Path, zeros_blob: tuple[Path, str]) -> None:
    blob, diff_id = zeros_blob
    store = SnapshotStore(tmp_path / "root")

    async def cancel_one_of_two() -> None:
        first = asyncio.ensure_future(store.unpack(diff_id, blob, GZIP, diff_id))
        await until_unpacking(tmp_path / "root" / "snapshots")
        second = asyncio.ensure_future(store.unpack(diff_id, blob, GZIP, diff_id))
        await asyncio.sleep(0)
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(cancel_one_of_two())
    store.close()
    assert store.list() == [diff_id]
    assert (store.path(diff_id) / "zeros").stat().st_size == ZEROS


def test_a_caller_that_joins_a_cancelled_unpack_gets_its_own(tmp_path: Path, zeros_blob: tuple[Path, str]) -> None:
    blob, diff_id = zeros_blob
    store = SnapshotStore(tmp_path / "root")

    async def join_while_it_stops() -> None:
        first = asyncio.ensure_future(store.unpack(diff_id, blob, GZIP, diff_id))
        await until_unpacking(tmp_path / "root" / "snapshots")
        first.cancel()
        await asyncio.sleep(0)  # the first caller has asked the worker to stop
        await store.unpack(diff_id, blob, GZIP, diff_id)
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(join_while_it_stops())
    store.close()
    assert store.list() == [diff_id]
    assert [entry.name for entry in (tmp_path / "root" / "snapshots").iterdir()] == [diff_id.removeprefix("sha256:")]

"""ImageService in process on a private root: recovery of unfinished intents at start, the
sweep that spares leased snapshots, and image records served from memory that follow the
database, including changes a `pycri images` command makes beside the daemon."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycri.config import Config
from pycri.image.manifest import Descriptor
from pycri.image.service import IMAGE_INTENT_KINDS, REMOVE_IMAGE, ImageService
from pycri.image.snapshots import UNPACK_LAYER, chain_ids
from pycri.image.source import ImageSource
from pycri.state.intents import IntentLog
from pycri.state.store import Store
from tests.support.busybox_images import busybox_layer
from tests.support.oci_images import Image, dir_entry, file_entry, make_image, make_layer

pytestmark = pytest.mark.integration


def source_of(image: Image) -> ImageSource:
    blobs = {layer.digest: layer.data for layer in image.layers}

    async def open_layer(layer: Descriptor) -> AsyncIterator[bytes]:
        yield blobs[layer.digest]

    return ImageSource(
        manifest_digest=image.manifest_digest,
        manifest=image.manifest,
        config=Descriptor(image.config_media_type, image.config_digest, len(image.config)),
        config_bytes=image.config,
        layers=tuple(Descriptor(layer.media_type, layer.digest, layer.size) for layer in image.layers),
        open_layer=open_layer,
    )


def two_layer_image(label: str) -> Image:
    extra = make_layer([dir_entry("etc"), file_entry(f"etc/{label}", label.encode())])
    return make_image([busybox_layer(), extra], {"Labels": {"t": label}})


def fake_chain(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(root_dir=tmp_path / "root", state_dir=tmp_path / "state")


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    config.root_dir.mkdir(parents=True)
    opened = Store(config.db_path)
    yield opened
    opened.close()


def snapshot_names(config: Config) -> list[str]:
    return sorted(entry.name for entry in (config.root_dir / "snapshots").iterdir())


async def test_recover_undoes_unpacks_finishes_removals_and_spares_leased_snapshots(
    config: Config, store: Store
) -> None:
    crashed = ImageService(config, store)
    image = two_layer_image("recover")
    await crashed.import_image(source_of(image), ["example.com/recover:v1"], [], "test")
    kept = two_layer_image("kept")
    await crashed.import_image(source_of(kept), ["example.com/kept:v1"], [], "test")
    # What a daemon killed half-way leaves: an unpack's temp dir and intent, a removal's
    # intent, an unrecorded snapshot and blob, an ingest file; plus a leased snapshot.
    intents = IntentLog(store)
    temp = config.root_dir / "snapshots" / "tmp-0123456789abcdef"
    (temp / "fs" / "bin").mkdir(parents=True)
    await intents.begin(UNPACK_LAYER, temp.name, {"chain_id": fake_chain("half"), "temp_dir": str(temp)})
    await intents.begin(REMOVE_IMAGE, image.config_digest, {"image_id": image.config_digest, "tag": None})
    orphan, leased = fake_chain("orphan"), fake_chain("leased")
    for chain in (orphan, leased):
        crashed.snapshots.path(chain).mkdir(parents=True)
    await crashed.metadata.lease_snapshots("container-1", [leased])
    orphan_blob = crashed.content.put_bytes(None, b"orphan")
    (config.root_dir / "content" / "ingest" / "tmpleft").write_bytes(b"partial")

    restarted = ImageService(config, store)
    await restarted.recover([intent for intent in intents.pending() if intent.kind in IMAGE_INTENT_KINDS])

    assert intents.pending() == []
    assert restarted.find("example.com/recover:v1") is None and restarted.find(image.config_digest) is None
    assert [record.id for record in restarted.metadata.list()] == [kept.config_digest]
    expected = sorted(chain.removeprefix("sha256:") for chain in [*chain_ids(list(kept.diff_ids)), leased])
    assert snapshot_names(config) == expected
    assert not restarted.content.has(orphan_blob) and not restarted.content.has(image.config_digest)
    assert list((config.root_dir / "content" / "ingest").iterdir()) == []


async def test_memory_follows_writes_and_a_moved_tag(config: Config, store: Store) -> None:
    images = ImageService(config, store)
    first, second = two_layer_image("first"), two_layer_image("second")
    await images.import_image(source_of(first), ["example.com/app:v1"], [], "test")
    await images.import_image(source_of(second), ["example.com/app:v1", "example.com/app:v2"], [], "test")

    moved_from = images.find(first.config_digest)
    assert moved_from is not None and moved_from.tags == []
    found = images.find("example.com/app:v1")
    assert found is not None and found.id == second.config_digest
    assert found.tags == ["example.com/app:v1", "example.com/app:v2"]
    # Memory equals what a fresh load reads from the database.
    assert ImageService(config, store).metadata.list() == images.metadata.list()

    await images.remove("example.com/app:v1")
    assert [image.repo_tags for image in await images.list()] == [[], ["example.com/app:v2"]]
    await images.remove("example.com/app:v2")
    assert [image.id for image in await images.list()] == [first.config_digest]
    assert ImageService(config, store).metadata.list() == images.metadata.list()


async def test_a_commands_changes_reach_the_daemons_memory(config: Config, store: Store) -> None:
    daemon = ImageService(config, store)
    await daemon.start()
    try:
        command_store = Store(config.db_path)
        command = ImageService(config, command_store, command=True)
        image = two_layer_image("beside")
        await command.import_image(source_of(image), ["example.com/beside:v1"], [], "test")
        status = await daemon.status("example.com/beside:v1")
        assert status is not None and status[0].id == image.config_digest

        await command.remove("example.com/beside:v1")
        assert await daemon.status("example.com/beside:v1") is None
        assert await daemon.list() == []
        command_store.close()
    finally:
        await daemon.close()

"""Snapshots as real overlay mounts, and the content store's ingest under concurrency and failure."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycri.image import overlay
from pycri.image.content import ContentError, ContentStore
from pycri.image.snapshots import SnapshotError, SnapshotStore, chain_ids, disk_usage
from pycri.image.unpack import UnsafeLayer
from tests.support.oci_images import (
    Layer,
    dir_entry,
    file_entry,
    hardlink_entry,
    make_layer,
    opaque_entry,
    symlink_entry,
    whiteout_entry,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def snapshots(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "root")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Targets the test mounts on; each is detached afterwards, mounted or not."""
    targets: list[Path] = []
    yield targets
    for target in targets:
        overlay.unmount(target)


def container_dirs(base: Path, mounts: list[Path]) -> tuple[Path, Path, Path]:
    upper, work, rootfs = base / "upper", base / "work", base / "rootfs"
    for directory in (upper, work, rootfs):
        directory.mkdir(parents=True)
    mounts.append(rootfs)
    return upper, work, rootfs


async def unpack_image(store: SnapshotStore, tmp_path: Path, layers: list[Layer]) -> list[str]:
    """Unpack every layer in parallel; return the chain IDs, bottom first."""
    chains = chain_ids([layer.diff_id for layer in layers])
    jobs = []
    for chain_id, layer in zip(chains, layers, strict=True):
        blob = tmp_path / layer.digest.removeprefix("sha256:")
        blob.write_bytes(layer.data)
        jobs.append(store.unpack(chain_id, blob, layer.media_type, layer.diff_id))
    await asyncio.gather(*jobs)
    return chains


THREE_LAYERS = [
    make_layer(
        [
            dir_entry("etc"),
            file_entry("etc/passwd", b"root:x:0:0\n"),
            file_entry("etc/secret", b"lower secret"),
            dir_entry("var/cache"),
            file_entry("var/cache/old", b"stale"),
            file_entry("bin/tool", b"v1", mode=0o755),
        ],
        "gzip",
    ),
    make_layer(
        [whiteout_entry("etc/secret"), opaque_entry("var/cache"), file_entry("var/cache/fresh", b"new")],
        "zstd",
    ),
    make_layer([file_entry("bin/tool", b"v3", mode=0o755), symlink_entry("bin/sh", "tool")], "none"),
]


async def test_three_layer_overlay_applies_whiteouts_and_opaque_dirs(
    snapshots: SnapshotStore, tmp_path: Path, mounts: list[Path]
) -> None:
    chains = await unpack_image(snapshots, tmp_path, THREE_LAYERS)
    upper, work, rootfs = container_dirs(tmp_path / "container", mounts)
    snapshots.mount_rootfs(list(reversed(chains)), upper, work, rootfs)

    assert (rootfs / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert not (rootfs / "etc/secret").exists()
    assert os.listdir(rootfs / "var/cache") == ["fresh"]
    assert (rootfs / "bin/tool").read_bytes() == b"v3"
    assert (rootfs / "bin/sh").resolve() == (rootfs / "bin/tool").resolve()

    (rootfs / "etc/hostname").write_text("pod")
    (rootfs / "etc/passwd").unlink()
    assert (upper / "etc/hostname").read_text() == "pod"
    assert stat.S_ISCHR((upper / "etc/passwd").lstat().st_mode)
    # The snapshots themselves never change.
    assert (snapshots.path(chains[0]) / "etc/passwd").exists()
    assert not (snapshots.path(chains[0]) / "etc/hostname").exists()

    overlay.unmount(rootfs)
    assert not os.path.ismount(rootfs)
    overlay.unmount(rootfs)  # again: nothing to do, no error


async def test_readonly_rootfs_single_and_multiple_layers(
    snapshots: SnapshotStore, tmp_path: Path, mounts: list[Path]
) -> None:
    chains = await unpack_image(snapshots, tmp_path, THREE_LAYERS)
    for name, lowers in (("one", chains[:1]), ("many", list(reversed(chains)))):
        rootfs = tmp_path / name
        rootfs.mkdir()
        mounts.append(rootfs)
        snapshots.mount_rootfs(lowers, None, None, rootfs, readonly=True)
        assert (rootfs / "etc/passwd").exists()
        with pytest.raises(OSError) as refused:
            (rootfs / "new").write_text("x")
        assert refused.value.errno == errno.EROFS


async def test_many_layers_exceeding_the_mount_option_page(
    snapshots: SnapshotStore, tmp_path: Path, mounts: list[Path]
) -> None:
    layers = [make_layer([file_entry(f"layer{n:02}", str(n).encode())], "none") for n in range(45)]
    chains = await unpack_image(snapshots, tmp_path, layers)
    assert len(":".join(str(snapshots.path(c)) for c in chains)) > 4096
    upper, work, rootfs = container_dirs(tmp_path / "container", mounts)
    snapshots.mount_rootfs(list(reversed(chains)), upper, work, rootfs)
    assert len(os.listdir(rootfs)) == 45
    assert (rootfs / "layer44").read_text() == "44"


async def test_concurrent_unpacks_of_one_layer_run_once(
    snapshots: SnapshotStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer([file_entry(f"f{n}", b"x" * n) for n in range(300)])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.data)
    with caplog.at_level(logging.INFO, logger="pycri.image.snapshots"):
        await asyncio.gather(
            *(snapshots.unpack(layer.diff_id, blob, layer.media_type, layer.diff_id) for _ in range(4))
        )
    assert [r.getMessage() for r in caplog.records].count("unpacked layer") == 1
    assert snapshots.list() == [layer.diff_id]
    assert (snapshots.path(layer.diff_id) / "f299").stat().st_size == 299


def temp_dirs(store_root: Path) -> list[str]:
    return [name for name in os.listdir(store_root / "snapshots") if name.startswith("tmp-")]


async def test_failed_unpacks_leave_nothing(snapshots: SnapshotStore, tmp_path: Path) -> None:
    layer = make_layer([file_entry("f", b"x")])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.data)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(SnapshotError, match=wrong):
        await snapshots.unpack(layer.diff_id, blob, layer.media_type, wrong)

    hostile = make_layer([symlink_entry("etc", "/etc"), file_entry("etc/pycri-escape", b"pwned")])
    blob.write_bytes(hostile.data)
    with pytest.raises(UnsafeLayer):
        await snapshots.unpack(hostile.diff_id, blob, hostile.media_type, hostile.diff_id)
    assert not Path("/etc/pycri-escape").exists()
    assert snapshots.list() == []
    assert temp_dirs(tmp_path / "root") == []


async def test_remove_usage_and_cleanup(snapshots: SnapshotStore, tmp_path: Path) -> None:
    data = os.urandom(64 * 1024)
    layer = make_layer([file_entry("big", data), hardlink_entry("same", "big"), dir_entry("d")])
    [chain_id] = await unpack_image(snapshots, tmp_path, [layer])
    used_bytes, inodes = snapshots.usage()
    # snapshots/, <chain>/, fs/, d/ and one inode for both names of big.
    assert inodes == 5
    assert len(data) <= used_bytes < len(data) + 64 * 1024
    assert disk_usage(snapshots.path(chain_id))[1] == 3

    (tmp_path / "root/snapshots/tmp-leftover/fs").mkdir(parents=True)
    snapshots.cleanup_tmp()
    assert temp_dirs(tmp_path / "root") == []
    snapshots.remove(chain_id)
    snapshots.remove(chain_id)
    assert not snapshots.has(chain_id)
    assert snapshots.list() == []
    assert temp_dirs(tmp_path / "root") == []


def test_chain_ids_follow_the_oci_definition() -> None:
    diff_ids = ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64]
    second = "sha256:" + hashlib.sha256(f"{diff_ids[0]} {diff_ids[1]}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {diff_ids[2]}".encode()).hexdigest()
    assert chain_ids(diff_ids) == [diff_ids[0], second, third]
    assert chain_ids([]) == []


# Content store


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class CountingSource:
    """An async chunk source that records how much of it was read and can pause midway."""

    def __init__(self, data: bytes, chunk_size: int = 256 * 1024) -> None:
        self.data = data
        self.chunk_size = chunk_size
        self.bytes_read = 0
        self.halfway = asyncio.Event()
        self.resume = asyncio.Event()
        self.resume.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.chunk_size):
            if start >= len(self.data) // 2:
                self.halfway.set()
                await self.resume.wait()
            chunk = self.data[start : start + self.chunk_size]
            self.bytes_read += len(chunk)
            yield chunk


def ingest_files(root: Path) -> list[str]:
    return os.listdir(root / "content/ingest")


async def test_concurrent_ingests_of_one_digest_read_the_source_once(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    first, second = CountingSource(data), CountingSource(data)
    first.resume.clear()
    digest = digest_of(data)
    first_ingest = asyncio.create_task(store.ingest(digest, len(data), first.chunks()))
    await first.halfway.wait()
    second_ingest = asyncio.create_task(store.ingest(digest, len(data), second.chunks()))
    await asyncio.sleep(0)
    assert not store.has(digest)  # so the second ingest is waiting on the first, not finding a blob
    first.resume.set()
    paths = await asyncio.gather(first_ingest, second_ingest)
    assert paths[0] == paths[1] == store.path(digest)
    assert first.bytes_read == len(data)
    assert second.bytes_read == 0
    assert store.read_bytes(digest) == data
    # A stored blob is not read again either.
    third = CountingSource(data)
    assert await store.ingest(digest, len(data), third.chunks()) == store.path(digest)
    assert third.bytes_read == 0
    assert list(store.list()) == [digest]


async def test_a_waiter_uses_its_own_source_when_the_first_ingest_fails(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(2 * 1024 * 1024)
    broken, good = CountingSource(data[:-1] + b"!"), CountingSource(data)
    broken.resume.clear()
    digest = digest_of(data)
    failing = asyncio.create_task(store.ingest(digest, len(data), broken.chunks()))
    await broken.halfway.wait()
    waiting = asyncio.create_task(store.ingest(digest, len(data), good.chunks()))
    await asyncio.sleep(0)
    broken.resume.set()
    with pytest.raises(ContentError):
        await failing
    assert await waiting == store.path(digest)
    assert store.read_bytes(digest) == data


async def test_digest_or_size_mismatch_leaves_no_file(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(1_500_000)
    claimed = digest_of(b"something else")
    with pytest.raises(ContentError, match=claimed):
        await store.ingest(claimed, len(data), CountingSource(data).chunks())
    with pytest.raises(ContentError, match="expected 10 bytes"):
        await store.ingest(digest_of(data), 10, CountingSource(data).chunks())
    with pytest.raises(ContentError, match=f"expected {len(data) + 1} bytes, got {len(data)}"):
        await store.ingest(digest_of(data), len(data) + 1, CountingSource(data).chunks())
    assert not store.has(claimed)
    assert not store.has(digest_of(data))
    assert ingest_files(tmp_path) == []


async def test_a_failing_source_leaves_no_file(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 2_000_000
        raise ConnectionResetError("peer went away")

    with pytest.raises(ContentError, match="peer went away"):
        await store.ingest(digest_of(b"whatever"), None, broken())
    assert ingest_files(tmp_path) == []


async def test_cancelled_ingest_leaves_no_file(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(4 * 1024 * 1024)
    source = CountingSource(data)
    source.resume.clear()
    ingest = asyncio.create_task(store.ingest(digest_of(data), len(data), source.chunks()))
    await source.halfway.wait()
    ingest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ingest
    assert ingest_files(tmp_path) == []
    assert not store.has(digest_of(data))


def test_small_blobs_delete_usage_and_stale_ingest_files(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    manifest = b'{"schemaVersion":2}'
    digest = store.put_bytes(None, manifest)
    assert digest == digest_of(manifest)
    assert store.put_bytes(digest, manifest) == digest
    with pytest.raises(ContentError):
        store.put_bytes(digest_of(b"other"), manifest)
    assert store.read_bytes(digest) == manifest
    assert store.size(digest) == len(manifest)
    used_bytes, inodes = store.usage()
    assert used_bytes > 0
    assert inodes == 4  # content/, ingest/, sha256/, the blob
    with pytest.raises(ContentError):
        store.path("sha256:../../etc/passwd")
    (tmp_path / "content/ingest/left-by-a-crash").write_bytes(b"partial")
    store.cleanup_ingest()
    assert ingest_files(tmp_path) == []
    store.delete(digest)
    store.delete(digest)
    assert not store.has(digest)

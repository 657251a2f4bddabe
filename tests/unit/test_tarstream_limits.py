"""The caps of images.limits in the tar reader and the extractor: oversized extended headers
are refused before they are read, and so are long paths, too many entries and too much data."""

from __future__ import annotations

import io
import resource
import tarfile
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycri.config import ImageLimits
from pycri.image import tarstream
from pycri.image.tarstream import LimitExceeded, Member
from pycri.image.unpack import ImageBudget, UnpackCancelled, UnpackGuard, apply_layer
from tests.support.hostile_tars import GNU_LONG_NAME, PAX, gzip_layer, huge_pax_tar, long_name_tar, raw_header
from tests.support.oci_images import OCI_LAYER_TYPES, file_entry, make_layer

pytestmark = pytest.mark.unit

GZIP = OCI_LAYER_TYPES["gzip"]


def members_of(tar_bytes: bytes, limits: ImageLimits) -> list[Member]:
    with tarstream.TarStream(io.BytesIO(tar_bytes), "plain") as stream:
        return list(tarstream.tar_members(stream, limits))


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_blob(tmp_path: Path, chunks: Iterable[bytes]) -> Path:
    blob = tmp_path / "blob"
    blob.write_bytes(gzip_layer(chunks).blob)
    (tmp_path / "target").mkdir()
    return blob


def test_a_512_mib_pax_header_is_refused_unread(tmp_path: Path) -> None:
    blob = write_blob(tmp_path, huge_pax_tar(512 * 1024 * 1024))
    assert blob.stat().st_size < 2 * 1024 * 1024
    before = max_rss_bytes()
    with pytest.raises(LimitExceeded, match="images.limits.pax_header_max_bytes"):
        apply_layer(blob, GZIP, tmp_path / "target")
    assert max_rss_bytes() - before < 100 * 1024 * 1024


def test_a_huge_gnu_long_name_is_refused_unread(tmp_path: Path) -> None:
    blob = write_blob(tmp_path, long_name_tar(256 * 1024 * 1024))
    before = max_rss_bytes()
    with pytest.raises(LimitExceeded, match="images.limits.path_max_bytes"):
        apply_layer(blob, GZIP, tmp_path / "target")
    assert max_rss_bytes() - before < 100 * 1024 * 1024


def test_headers_within_the_caps_are_read() -> None:
    limits = ImageLimits(pax_header_max_bytes=4096, path_max_bytes=300)
    pax = b"".join(huge_pax_tar(4096))
    assert [m.name for m in members_of(pax, limits)] == ["f"]
    long_name = b"".join(long_name_tar(301))
    assert [m.name for m in members_of(long_name, limits)] == ["a" * 300]
    with pytest.raises(LimitExceeded, match="path_max_bytes"):
        members_of(b"".join(long_name_tar(302)), limits)


def test_pax_headers_for_one_member_add_up() -> None:
    """Several PAX headers before one member count together against the cap."""
    limits = ImageLimits(pax_header_max_bytes=6000)
    one = b"".join(huge_pax_tar(4000))
    header_and_data = one[: 512 + 4096]
    with pytest.raises(LimitExceeded, match="pax_header_max_bytes"):
        members_of(header_and_data + one, limits)


@pytest.mark.parametrize("key", ["path", "linkpath"])
def test_a_pax_path_over_the_cap_is_refused(key: str) -> None:
    info = tarfile.TarInfo("f")
    info.type = tarfile.SYMTYPE
    info.pax_headers = {key: "d/" * 200 + "x"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info)
    with pytest.raises(LimitExceeded, match="path_max_bytes"):
        members_of(buffer.getvalue(), ImageLimits(path_max_bytes=400))
    assert len(members_of(buffer.getvalue(), ImageLimits(path_max_bytes=401))) == 1


def test_entries_over_the_cap_are_refused() -> None:
    tar_bytes = make_layer([file_entry(f"f{n}", b"x") for n in range(4)], "none").data
    assert len(members_of(tar_bytes, ImageLimits(entries_per_layer_max=4))) == 4
    with pytest.raises(LimitExceeded, match="entries_per_layer_max"):
        members_of(tar_bytes, ImageLimits(entries_per_layer_max=3))


def test_layer_and_image_unpacked_size(tmp_path: Path) -> None:
    layer = make_layer([file_entry("a", b"x" * 600), file_entry("b", b"y" * 600)])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.data)
    for name in ("ok", "over", "first", "second"):
        (tmp_path / name).mkdir()
    assert apply_layer(blob, GZIP, tmp_path / "ok", UnpackGuard(ImageLimits(layer_unpacked_max_bytes=1200)))
    with pytest.raises(LimitExceeded, match="layer_unpacked_max_bytes"):
        apply_layer(blob, GZIP, tmp_path / "over", UnpackGuard(ImageLimits(layer_unpacked_max_bytes=1199)))
    budget = ImageBudget(2000)
    apply_layer(blob, GZIP, tmp_path / "first", UnpackGuard(image_budget=budget))
    with pytest.raises(LimitExceeded, match="image_unpacked_max_bytes"):
        apply_layer(blob, GZIP, tmp_path / "second", UnpackGuard(image_budget=budget))


def test_a_cancelled_guard_stops_the_unpack(tmp_path: Path) -> None:
    layer = make_layer([file_entry("a", b"x")])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.data)
    (tmp_path / "target").mkdir()
    guard = UnpackGuard(cancelled=threading.Event())
    guard.cancelled.set()
    with pytest.raises(UnpackCancelled):
        apply_layer(blob, GZIP, tmp_path / "target", guard)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from([PAX, GNU_LONG_NAME]),
    size=st.integers(min_value=1, max_value=1 << 40),
    pax_cap=st.integers(min_value=1, max_value=1 << 20),
    path_cap=st.integers(min_value=1, max_value=1 << 16),
)
def test_an_extended_header_over_its_cap_is_refused_from_its_header_alone(
    kind: bytes, size: int, pax_cap: int, path_cap: int
) -> None:
    """Only the header block is given: a cap must fire before the data is wanted, or the
    stream ends inside the header; either way nothing of `size` is held."""
    limits = ImageLimits(pax_header_max_bytes=pax_cap, path_max_bytes=path_cap)
    over = size > pax_cap if kind == PAX else size > min(path_cap + 1, pax_cap)
    try:
        members_of(raw_header(b"h", kind, size), limits)
    except LimitExceeded:
        assert over
    except tarstream.LayerError as error:
        assert not over
        assert "ends inside" in str(error)

"""Mount.mount_options (KEP-5855): checked by name and applied to the bind mount's OCI options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.oci.spec import SpecError
from pycri.oci.spec_mounts import bind_mount_options
from tests.unit.test_oci_spec import build, container_config

pytestmark = pytest.mark.unit

TAKEN = ("noexec", "nodev", "nosuid", "exec", "dev", "suid")


def _bind(base: Path, *options: str, **fields: Any) -> dict[str, Any]:
    mount = api_pb2.Mount(container_path="/data", host_path="/srv/data", mount_options=list(options), **fields)
    spec = build(base, container_config(args=["/app"], mounts=[mount]))
    return next(m for m in spec["mounts"] if m["destination"] == "/data")


def test_options_follow_the_bind_defaults(tmp_path: Path) -> None:
    assert _bind(tmp_path, "noexec", "nodev", "nosuid")["options"] == [
        "rbind",
        "rprivate",
        "rw",
        "noexec",
        "nodev",
        "nosuid",
    ]


def test_readonly_mount_keeps_ro_and_takes_options(tmp_path: Path) -> None:
    assert _bind(tmp_path, "noexec", readonly=True)["options"] == ["rbind", "rprivate", "ro", "noexec"]


def test_no_options_leave_the_mount_as_before(tmp_path: Path) -> None:
    assert _bind(tmp_path)["options"] == ["rbind", "rprivate", "rw"]


def test_repeated_option_is_kept_once() -> None:
    assert bind_mount_options(["nosuid", "noexec", "nosuid"], "mounts[0]") == ["nosuid", "noexec"]


@pytest.mark.parametrize("option", ["noatime", "bind", "remount", "uid=0", "", "NOEXEC", "noexec "])
def test_unknown_option_is_refused_by_name(tmp_path: Path, option: str) -> None:
    with pytest.raises(SpecError, match=rf"mounts\[0\]\.mount_options\[1\]: {option!r} is not a bind mount option"):
        _bind(tmp_path, "nodev", option)


@pytest.mark.parametrize("option", ["ro", "rw", "rro"])
def test_read_only_ness_is_refused_with_the_field_to_use(tmp_path: Path, option: str) -> None:
    with pytest.raises(SpecError, match=r"mount_options\[0\]: .* set readonly or recursive_read_only instead"):
        _bind(tmp_path, option)


@pytest.mark.parametrize(("first", "second"), [("noexec", "exec"), ("dev", "nodev"), ("nosuid", "suid")])
def test_conflicting_options_are_refused(tmp_path: Path, first: str, second: str) -> None:
    with pytest.raises(SpecError, match=rf"mount_options\[1\]: {second!r} conflicts with {first!r}"):
        _bind(tmp_path, first, second)


@given(st.lists(st.one_of(st.sampled_from(TAKEN), st.text(max_size=8)), max_size=6))
def test_any_options_are_taken_or_refused_by_field(options: list[str]) -> None:
    try:
        chosen = bind_mount_options(options, "mounts[3]")
    except SpecError as err:
        assert str(err).startswith("mounts[3].mount_options[")
        return
    assert set(chosen) == set(options)
    assert len(chosen) == len(set(chosen))
    assert not any({"no" + option, option.removeprefix("no")} <= set(chosen) for option in chosen)

"""Path rules of both drivers, on any input: slice names expand to nested slices, and no path a
driver accepts leaves the hierarchy roots."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.cgroups import CgroupLayout, make_cgroup_manager
from pycri.cgroups.cgroupfs import cgroupfs_directory
from pycri.cgroups.systemd import expand_slice, slice_of, systemd_directory

pytestmark = pytest.mark.unit

ROOT = Path("/sys/fs/cgroup")
LAYOUT = CgroupLayout(v1={"memory": ROOT / "memory", "cpu": ROOT / "cpu"}, hybrid_unified=ROOT / "unified")
UNIT_CHARACTERS = "abcXYZ019_.:\\"
components = st.text(alphabet=UNIT_CHARACTERS, min_size=1, max_size=8)
# Anything, and text made mostly of the characters that matter to paths and unit names.
hostile = st.text() | st.text(alphabet="./-:\\a.slicepod", max_size=40)


class FakeBus:
    def start_transient_unit(self, unit: object) -> None:
        raise AssertionError("no unit is started here")

    def stop_unit(self, name: str) -> None:
        raise AssertionError("no unit is stopped here")


def contained(directory: PurePosixPath) -> bool:
    return (
        not directory.is_absolute()
        and ".." not in directory.parts
        and all(Path(mount / directory).resolve().is_relative_to(mount) for mount in LAYOUT.hierarchy_mounts())
    )


@given(st.lists(components, min_size=1, max_size=6))
def test_a_slice_expands_to_each_of_its_prefixes(parts: list[str]) -> None:
    name = "-".join(parts) + ".slice"

    expanded = expand_slice(name)

    assert expanded.parts == tuple("-".join(parts[: depth + 1]) + ".slice" for depth in range(len(parts)))
    assert expanded.name == name
    assert contained(expanded)


def test_known_expansions() -> None:
    assert expand_slice("kubepods-burstable-pod1.slice") == PurePosixPath(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
    )
    assert expand_slice("-.slice") == PurePosixPath()
    assert systemd_directory("kubepods-burstable-pod1.slice:pycri:abc") == PurePosixPath(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/pycri-abc.scope"
    )
    assert systemd_directory(":pycri:abc") == PurePosixPath("system.slice/pycri-abc.scope")
    assert systemd_directory("pycri.slice:pycri:pycri-pod1.slice") == PurePosixPath("pycri.slice/pycri-pod1.slice")
    assert (slice_of("/pycri"), slice_of("pycri.slice"), slice_of("/"), slice_of("/a/b")) == (
        "pycri.slice",
        "pycri.slice",
        "pycri.slice",
        "a-b.slice",
    )


@pytest.mark.parametrize(
    "name", [".slice", "a--b.slice", "-a.slice", "a-.slice", "a/b.slice", "../x.slice", "a.scope", "a b.slice", ""]
)
def test_names_that_are_no_slice(name: str) -> None:
    with pytest.raises(ValueError):
        expand_slice(name)


@given(hostile)
def test_any_slice_name_is_refused_or_stays_below_the_roots(name: str) -> None:
    try:
        expanded = expand_slice(name)
    except ValueError:
        return
    assert contained(expanded)
    assert all(part.endswith(".slice") for part in expanded.parts)


@given(hostile)
def test_any_systemd_cgroups_path_is_refused_or_stays_below_the_roots(path: str) -> None:
    try:
        directory = systemd_directory(path)
    except ValueError:
        return
    assert contained(directory)


@given(hostile)
def test_any_cgroupfs_path_is_refused_or_stays_below_the_roots(path: str) -> None:
    try:
        directory = cgroupfs_directory(path)
    except ValueError:
        root = PurePosixPath("/", path.lstrip("/")) == PurePosixPath("/")  # "//" is the root too
        assert not path.startswith("/") or ".." in PurePosixPath(path).parts or root
        return
    assert contained(directory) and directory != PurePosixPath()


@given(st.lists(components.filter(lambda part: part not in (".", "..")), min_size=1, max_size=5))
def test_a_cgroupfs_path_is_its_own_directory(parts: list[str]) -> None:
    assert cgroupfs_directory("/" + "/".join(parts)) == PurePosixPath(*parts)


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
@given(parent=hostile, leaf=hostile)
def test_container_paths_are_refused_or_directly_below_their_parent(driver: str, parent: str, leaf: str) -> None:
    cgroups = make_cgroup_manager(driver, "/pycri", "pod", layout=LAYOUT, systemd=FakeBus())
    try:
        cgroups.check_parent(parent)
        path = cgroups.container_path(parent, leaf)
    except ValueError:
        return
    directory = cgroups.directory(path)
    assert contained(directory)
    assert directory.parent == cgroups.directory(parent)


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
@given(sandbox_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64))
def test_own_pod_parents_are_owned_and_below_the_configured_parent(driver: str, sandbox_id: str) -> None:
    cgroups = make_cgroup_manager(driver, "/pycri", "pod", layout=LAYOUT, systemd=FakeBus())

    pod = cgroups.pod_parent("", sandbox_id)

    cgroups.check_parent(pod)
    assert cgroups.owns_pod_parent(pod)
    assert cgroups.directory(pod).parent == cgroups.directory(cgroups.parent)
    assert not cgroups.owns_pod_parent(
        cgroups.pod_parent("/kubepods/pod1" if driver == "cgroupfs" else "k-p1.slice", sandbox_id)
    )


@pytest.mark.parametrize(
    ("driver", "parent", "conmon_cgroup"),
    [
        ("cgroupfs", "pycri", "pod"),
        ("cgroupfs", "/pycri/../etc", "pod"),
        ("cgroupfs", "/pycri", "/pycri"),  # conmon would be a process beside the pods' cgroups
        ("cgroupfs", "/pycri/nested", "/pycri"),
        ("cgroupfs", "/pycri", "conmon.slice"),
        ("systemd", "/pycri", "/conmon"),
        ("systemd", "a--b.slice", "pod"),
        ("upstart", "/pycri", "pod"),
    ],
)
def test_settings_a_driver_cannot_take(driver: str, parent: str, conmon_cgroup: str) -> None:
    with pytest.raises(ValueError):
        make_cgroup_manager(driver, parent, conmon_cgroup, layout=LAYOUT, systemd=FakeBus())


@pytest.mark.parametrize(
    ("driver", "parent"),
    [("cgroupfs", "kubepods.slice"), ("cgroupfs", "/a/../b"), ("cgroupfs", "/"), ("systemd", "/kubepods/burstable")],
)
def test_pod_parents_a_driver_cannot_take(driver: str, parent: str) -> None:
    cgroups = make_cgroup_manager(driver, "/pycri", "pod", layout=LAYOUT, systemd=FakeBus())
    with pytest.raises(ValueError):
        cgroups.check_parent(parent)

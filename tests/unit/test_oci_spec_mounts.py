"""Mounts, masked and read-only paths of a container spec."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pycri.api import api_pb2
from pycri.oci.spec import SpecError, missing_bind_sources
from pycri.oci.spec_mounts import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
from tests.unit.test_oci_spec import HOST, build, container_config, sandbox_config

pytestmark = pytest.mark.unit


def _mounts(base: Path, *cri_mounts: api_pb2.Mount, **security: Any) -> list[dict[str, Any]]:
    return _spec(base, *cri_mounts, **security)["mounts"]


def _spec(base: Path, *cri_mounts: api_pb2.Mount, host: Any = HOST, **security: Any) -> dict[str, Any]:
    config = container_config(args=["/app"], mounts=list(cri_mounts))
    for key, value in security.items():
        if isinstance(value, list):
            getattr(config.linux.security_context, key).extend(value)
        else:
            setattr(config.linux.security_context, key, value)
    sandbox = sandbox_config(privileged=bool(security.get("privileged")))
    return build(base, config, sandbox=sandbox, host=host)


def _by_destination(mounts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {mount["destination"]: mount for mount in mounts}


def test_default_mounts_in_order(tmp_path: Path) -> None:
    mounts = _mounts(tmp_path)
    assert [mount["destination"] for mount in mounts] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/dev/shm",
    ]
    by_destination = _by_destination(mounts)
    assert by_destination["/sys"]["options"][-1] == "ro"
    assert by_destination["/sys/fs/cgroup"]["options"][-1] == "ro"
    assert by_destination["/etc/hosts"] == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": str(tmp_path / "pod" / "hosts"),
        "options": ["rbind", "rprivate", "rw"],
    }
    assert by_destination["/dev/shm"]["source"] == str(tmp_path / "pod" / "shm")


def test_privileged_gets_writable_sys_and_cgroup(tmp_path: Path) -> None:
    by_destination = _by_destination(_mounts(tmp_path, privileged=True))
    assert by_destination["/sys"]["options"][-1] == "rw"
    assert by_destination["/sys/fs/cgroup"]["options"][-1] == "rw"


def test_readonly_rootfs_makes_the_pod_files_readonly_but_not_shm(tmp_path: Path) -> None:
    by_destination = _by_destination(_mounts(tmp_path, readonly_rootfs=True))
    for destination in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        assert by_destination[destination]["options"][-1] == "ro"
    assert by_destination["/dev/shm"]["options"][-1] == "rw"


def test_cri_mounts_options_and_order(tmp_path: Path) -> None:
    mounts = _mounts(
        tmp_path,
        api_pb2.Mount(container_path="/data/deep/er", host_path="/srv/c"),
        api_pb2.Mount(container_path="/data", host_path="/srv/a", readonly=True, selinux_relabel=True),
        api_pb2.Mount(container_path="/cache", host_path="/srv/b", readonly=True, recursive_read_only=True),
    )
    binds = [mount for mount in mounts if mount["source"].startswith("/srv")]
    assert binds == [
        {"destination": "/data", "type": "bind", "source": "/srv/a", "options": ["rbind", "rprivate", "ro"]},
        {"destination": "/cache", "type": "bind", "source": "/srv/b", "options": ["rbind", "rprivate", "rro"]},
        {"destination": "/data/deep/er", "type": "bind", "source": "/srv/c", "options": ["rbind", "rprivate", "rw"]},
    ]


def test_cri_mounts_replace_defaults_at_the_same_destination(tmp_path: Path) -> None:
    mounts = _mounts(
        tmp_path,
        api_pb2.Mount(container_path="/etc/hosts", host_path="/custom/hosts"),
        api_pb2.Mount(container_path="/sys/fs/cgroup/", host_path="/custom/cgroup"),
    )
    by_destination = _by_destination(mounts)
    assert by_destination["/etc/hosts"]["source"] == "/custom/hosts"
    assert [mount["destination"] for mount in mounts].count("/etc/hosts") == 1
    assert "/sys/fs/cgroup" not in by_destination
    assert by_destination["/sys/fs/cgroup/"]["source"] == "/custom/cgroup"


def test_a_cri_dev_mount_replaces_everything_under_dev(tmp_path: Path) -> None:
    mounts = _mounts(tmp_path, api_pb2.Mount(container_path="/dev", host_path="/custom/dev"))
    destinations = [mount["destination"] for mount in mounts]
    assert "/dev/pts" not in destinations and "/dev/mqueue" not in destinations
    # The pod's shm is a bind too, so it still goes on top of the replacement /dev.
    assert destinations.index("/dev") < destinations.index("/dev/shm")


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (api_pb2.Mount(container_path="rel", host_path="/x"), r"^mounts\[0\].container_path: 'rel' is not absolute"),
        (api_pb2.Mount(container_path="/x"), r"^mounts\[0\].host_path: empty"),
        (api_pb2.Mount(container_path="/x", host_path="srv/x"), r"^mounts\[0\].host_path: 'srv/x' is not absolute"),
        (api_pb2.Mount(container_path="/x", host_path="/srv\0x"), r"^mounts\[0\].host_path: .* NUL"),
        (api_pb2.Mount(container_path="/x\0", host_path="/srv"), r"^mounts\[0\].container_path: .* NUL"),
        (
            api_pb2.Mount(container_path="/x", image=api_pb2.ImageSpec(image="busybox")),
            r"^mounts\[0\].image: image volumes must be mounted by the container service first",
        ),
        (
            api_pb2.Mount(container_path="/x", host_path="/y", uidMappings=[api_pb2.IDMapping(length=1)]),
            r"^mounts\[0\]: ID-mapped mounts must be made by the container service first",
        ),
        (
            api_pb2.Mount(container_path="/x", host_path="/y", recursive_read_only=True),
            r"^mounts\[0\].recursive_read_only: needs readonly",
        ),
        (
            api_pb2.Mount(
                container_path="/x",
                host_path="/y",
                readonly=True,
                recursive_read_only=True,
                propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER,
            ),
            r"^mounts\[0\].recursive_read_only: needs private propagation",
        ),
        (api_pb2.Mount(container_path="/x", host_path="/y", propagation=9), r"^mounts\[0\].propagation: unknown"),
    ],
)
def test_bad_cri_mounts(tmp_path: Path, mount: api_pb2.Mount, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _mounts(tmp_path, mount)


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/private rw,relatime - tmpfs tmpfs rw
31 22 0:41 / /srv/slave rw,relatime master:7 - tmpfs tmpfs rw
32 22 0:42 / /srv/with\\040space rw,relatime - tmpfs tmpfs rw
"""


@pytest.fixture
def mountinfo_host(tmp_path: Path) -> Any:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return replace(HOST, mountinfo=path)


@pytest.mark.parametrize(
    ("source", "propagation", "option", "rootfs_propagation"),
    [
        ("/srv/shared-root/dir", api_pb2.PROPAGATION_BIDIRECTIONAL, "rshared", "rshared"),
        ("/srv/shared-root/dir", api_pb2.PROPAGATION_HOST_TO_CONTAINER, "rslave", "rslave"),
        ("/srv/slave/dir", api_pb2.PROPAGATION_HOST_TO_CONTAINER, "rslave", "rslave"),
        ("/srv/private/dir", api_pb2.PROPAGATION_PRIVATE, "rprivate", None),
    ],
)
def test_propagation(
    tmp_path: Path, mountinfo_host: Any, source: str, propagation: int, option: str, rootfs_propagation: str | None
) -> None:
    mount = api_pb2.Mount(container_path="/m", host_path=source, propagation=propagation)
    spec = _spec(tmp_path, mount, host=mountinfo_host)
    assert _by_destination(spec["mounts"])["/m"]["options"][1] == option
    assert spec["linux"].get("rootfsPropagation") == rootfs_propagation


def test_bidirectional_wins_over_host_to_container(tmp_path: Path, mountinfo_host: Any) -> None:
    spec = _spec(
        tmp_path,
        api_pb2.Mount(container_path="/a", host_path="/srv/slave", propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER),
        api_pb2.Mount(container_path="/b", host_path="/home", propagation=api_pb2.PROPAGATION_BIDIRECTIONAL),
        api_pb2.Mount(container_path="/c", host_path="/srv/slave", propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER),
        host=mountinfo_host,
    )
    assert spec["linux"]["rootfsPropagation"] == "rshared"


@pytest.mark.parametrize(
    ("source", "propagation", "message"),
    [
        ("/srv/slave/x", api_pb2.PROPAGATION_BIDIRECTIONAL, "is not on a shared mount"),
        ("/srv/private/x", api_pb2.PROPAGATION_HOST_TO_CONTAINER, "is on neither a shared nor a slave mount"),
        ("/srv/with space/x", api_pb2.PROPAGATION_HOST_TO_CONTAINER, "is on neither a shared nor a slave mount"),
    ],
)
def test_propagation_needs_a_shared_or_slave_source(
    tmp_path: Path, mountinfo_host: Any, source: str, propagation: int, message: str
) -> None:
    mount = api_pb2.Mount(container_path="/m", host_path=source, propagation=propagation)
    with pytest.raises(SpecError, match=rf"^mounts\[0\].propagation: .*{message}"):
        _spec(tmp_path, mount, host=mountinfo_host)


def test_masked_and_readonly_paths(tmp_path: Path) -> None:
    linux = _spec(tmp_path)["linux"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]

    linux = _spec(tmp_path, masked_paths=["/proc/secret"], readonly_paths=["/proc/ro"])["linux"]
    assert linux["maskedPaths"] == ["/proc/secret"]
    assert linux["readonlyPaths"] == ["/proc/ro"]

    linux = _spec(tmp_path, privileged=True, masked_paths=["/proc/secret"])["linux"]
    assert linux["maskedPaths"] == linux["readonlyPaths"] == []


def test_missing_bind_sources(tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    config = container_config(
        mounts=[
            api_pb2.Mount(container_path="/a", host_path=str(tmp_path / "exists")),
            api_pb2.Mount(container_path="/b", host_path=str(tmp_path / "missing" / "deep")),
            api_pb2.Mount(container_path="/c", host_path=str(tmp_path / "dangling")),
            api_pb2.Mount(container_path="/d", image=api_pb2.ImageSpec(image="busybox")),
        ]
    )
    assert missing_bind_sources(config) == [tmp_path / "missing" / "deep"]


@pytest.mark.parametrize("host_path", ["relative/dir", "", "/srv/a\0b"])
def test_missing_bind_sources_refuses_a_host_path_that_is_not_absolute(tmp_path: Path, host_path: str) -> None:
    config = container_config(mounts=[api_pb2.Mount(container_path="/a", host_path=host_path)])
    with pytest.raises(SpecError, match=r"^mounts\[0\].host_path"):
        missing_bind_sources(config)

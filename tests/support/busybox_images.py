"""The standard test images: a busybox-static rootfs in a few shapes, pushed to a test registry."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.support.oci_images import (
    DEFAULT_PATH_ENV,
    Compression,
    Entry,
    Image,
    Index,
    Layer,
    dir_entry,
    file_entry,
    hardlink_entry,
    make_image,
    make_index,
    make_layer,
    opaque_entry,
    push_image,
    push_index,
    symlink_entry,
    whiteout_entry,
)

BUSYBOX = Path("/bin/busybox")
SHELL = ["sh"]

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "pycri:x:1000:1000:pycri:/home/pycri:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\npycri:x:1000:\npycrisupp:x:1001:pycri\nnobody:x:65534:\n"
USER_UID = 1000
USER_GID = 1000
SUPPLEMENTAL_GID = 1001


@functools.cache
def busybox_applets() -> tuple[str, ...]:
    listing = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return tuple(sorted(name for name in listing.split() if name != "busybox"))


def busybox_rootfs_entries(name_marker: str = "") -> list[Entry]:
    """/bin/busybox with every applet symlinked in /bin, users and groups, /tmp, /root, /var/www.

    A `name_marker` adds /etc/pycri-image holding it, to give a layer a diff_id of its own.
    """
    entries = [
        dir_entry("bin"),
        file_entry("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *(symlink_entry(f"bin/{applet}", "busybox") for applet in busybox_applets()),
        dir_entry("etc"),
        file_entry("etc/passwd", PASSWD.encode()),
        file_entry("etc/group", GROUP.encode()),
        dir_entry("home"),
        dir_entry("home/pycri", uid=USER_UID, gid=USER_GID),
        dir_entry("root", mode=0o700),
        dir_entry("tmp", mode=0o1777),
        dir_entry("var"),
        dir_entry("var/www"),
    ]
    if name_marker:
        entries.append(file_entry("etc/pycri-image", f"{name_marker}\n".encode()))
    return sorted(entries, key=lambda entry: entry.path)


@functools.cache
def busybox_layer(compression: Compression = "gzip", name_marker: str = "") -> Layer:
    """Cached for the session: every image built on busybox shares one blob per argument pair."""
    return make_layer(busybox_rootfs_entries(name_marker), compression)


def arch_marker_layer(architecture: str) -> Layer:
    return make_layer([dir_entry("etc"), file_entry("etc/arch", f"{architecture}\n".encode())])


def layered_image_layers() -> tuple[Layer, Layer, Layer]:
    """busybox; then /data/keep, /data/gone, /opq/old; then a whiteout, an opaque dir, links.

    The merged rootfs has /data/keep, /data/three, /data/three-hardlink (same inode as
    /data/three), /data/keep-symlink -> keep, and /opq/new only; no /data/gone, no /opq/old.
    """
    second = make_layer(
        [
            dir_entry("data"),
            file_entry("data/gone", b"gone\n"),
            file_entry("data/keep", b"keep\n"),
            dir_entry("opq"),
            file_entry("opq/old", b"old\n"),
        ]
    )
    third = make_layer(
        [
            dir_entry("data"),
            whiteout_entry("data/gone"),
            symlink_entry("data/keep-symlink", "keep"),
            file_entry("data/three", b"three\n"),
            hardlink_entry("data/three-hardlink", "data/three"),
            dir_entry("opq"),
            opaque_entry("opq"),
            file_entry("opq/new", b"new\n"),
        ]
    )
    return busybox_layer(), second, third


@dataclass(frozen=True)
class PushedImage:
    repository: str
    tags: tuple[str, ...]
    manifest_digest: str
    image: Image

    @property
    def reference(self) -> str:
        """The first tag's reference, or the digest reference for untagged images."""
        return self.tagged(self.tags[0]) if self.tags else self.digest_reference

    @property
    def digest_reference(self) -> str:
        return f"{self.repository}@{self.manifest_digest}"

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(self.tagged(tag) for tag in self.tags)

    @property
    def config_digest(self) -> str:
        return self.image.config_digest

    @property
    def image_id(self) -> str:
        return self.image.config_digest

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return self.image.diff_ids

    @property
    def size(self) -> int:
        return self.image.size

    def tagged(self, tag: str) -> str:
        return f"{self.repository}:{tag}"


@dataclass(frozen=True)
class PushedIndex:
    repository: str
    tags: tuple[str, ...]
    digest: str
    index: Index
    platforms: dict[str, PushedImage]

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tags[0]}" if self.tags else self.digest_reference

    @property
    def digest_reference(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class TestImages:
    """The standard set; each image has its own ID (config label org.pycri.test.image).

    busybox   pycri-test/busybox:latest, :1.0, :1.1 (one image), OCI, Cmd ["sh"]
    multiarch pycri-test/multiarch:latest, OCI index of linux/amd64 and linux/arm64/v8; /etc/arch
              holds "amd64\\n" or "arm64\\n"
    user      pycri-test/user:latest, User "pycri" (1000:1000, supplemental group 1001), WorkingDir
              /home/pycri, Env PYCRI_IMAGE=user, Entrypoint ["/bin/sh", "-c"], Cmd ["id; pwd"], StopSignal SIGINT
    layers    pycri-test/layers:latest, three layers (see layered_image_layers)
    docker    pycri-test/docker:latest, busybox with Docker schema2 media types
    zstd      pycri-test/zstd:latest, one zstd layer; /etc/pycri-image holds "zstd\\n"
    plain     pycri-test/plain:latest, one uncompressed layer; /etc/pycri-image holds "plain\\n"
    pause     pause:3.10, busybox with Entrypoint ["/bin/sleep", "infinity"] (as PID 1 it ignores
              SIGTERM: stop it with SIGKILL)
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    registry_host: str
    busybox: PushedImage
    multiarch: PushedIndex
    user: PushedImage
    layers: PushedImage
    docker: PushedImage
    zstd: PushedImage
    plain: PushedImage
    pause: PushedImage


def _registry_host(registry_url: str) -> str:
    return registry_url.split("://", 1)[-1].rstrip("/")


def push_tagged(
    registry_url: str, repo: str, tags: tuple[str, ...], image: Image, auth: tuple[str, str] | None = None
) -> PushedImage:
    """Pushes `image` under each tag (or by digest alone when `tags` is empty)."""
    manifest_digests = [push_image(registry_url, repo, tag, image, auth) for tag in tags or (None,)]
    return PushedImage(f"{_registry_host(registry_url)}/{repo}", tags, manifest_digests[0], image)


def _config(name: str, **settings: object) -> dict[str, object]:
    # The label gives every standard image an ID of its own, even where the layers are shared.
    return {"Labels": {"org.pycri.test.image": name}, **settings}


def _push_multiarch(registry_url: str, repo: str, tag: str) -> PushedIndex:
    images = {
        platform: make_image(
            [busybox_layer(), arch_marker_layer(arch)], _config(f"multiarch-{arch}", Cmd=SHELL), platform=platform
        )
        for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64"))
    }
    index = make_index(images)
    digest = push_index(registry_url, repo, tag, index)
    repository = f"{_registry_host(registry_url)}/{repo}"
    platforms = {
        platform: PushedImage(repository, (), image.manifest_digest, image) for platform, image in images.items()
    }
    return PushedIndex(repository, (tag,), digest, index, platforms)


def build_test_images(registry_url: str) -> TestImages:
    """Builds and pushes the standard set (see TestImages) to `registry_url`."""

    def push(repo: str, tags: tuple[str, ...], image: Image) -> PushedImage:
        return push_tagged(registry_url, repo, tags, image)

    base = [busybox_layer()]
    user_config = _config(
        "user",
        User="pycri",
        Env=[DEFAULT_PATH_ENV, "PYCRI_IMAGE=user"],
        WorkingDir="/home/pycri",
        Entrypoint=["/bin/sh", "-c"],
        Cmd=["id; pwd"],
        StopSignal="SIGINT",
    )
    return TestImages(
        registry_host=_registry_host(registry_url),
        busybox=push("pycri-test/busybox", ("latest", "1.0", "1.1"), make_image(base, _config("busybox", Cmd=SHELL))),
        multiarch=_push_multiarch(registry_url, "pycri-test/multiarch", "latest"),
        user=push("pycri-test/user", ("latest",), make_image(base, user_config)),
        layers=push("pycri-test/layers", ("latest",), make_image(layered_image_layers(), _config("layers", Cmd=SHELL))),
        docker=push(
            "pycri-test/docker", ("latest",), make_image(base, _config("docker", Cmd=SHELL), image_format="docker")
        ),
        zstd=push(
            "pycri-test/zstd",
            ("latest",),
            make_image([busybox_layer("zstd", name_marker="zstd")], _config("zstd", Cmd=SHELL)),
        ),
        plain=push(
            "pycri-test/plain",
            ("latest",),
            make_image([busybox_layer("none", name_marker="plain")], _config("plain", Cmd=SHELL)),
        ),
        pause=push("pause", ("3.10",), make_image(base, _config("pause", Entrypoint=["/bin/sleep", "infinity"]))),
    )

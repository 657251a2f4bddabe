import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.image.manifest import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    InvalidManifest,
    NoMatchingPlatform,
    Platform,
    compatible_platforms,
    digest_of,
    new_hasher,
    normalize_platform,
    parse_manifest,
    parse_platform,
    select_manifest,
)

pytestmark = pytest.mark.unit

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def descriptor_json(media_type: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(n), "size": 100 + n, **extra}


def manifest_json(media_type: str | None = MEDIA_TYPE_OCI_MANIFEST, **overrides: Any) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor_json(OCI_CONFIG, 1),
        "layers": [descriptor_json(OCI_LAYER, 2), descriptor_json("application/vnd.oci.image.layer.v1.tar+zstd", 3)],
    }
    if media_type is not None:
        document["mediaType"] = media_type
    return json.dumps(document | overrides).encode()


def index_json(*platforms: dict[str, str] | None, media_type: str = MEDIA_TYPE_OCI_INDEX) -> bytes:
    entries = [
        descriptor_json(MEDIA_TYPE_OCI_MANIFEST, 10 + n, **({"platform": p} if p is not None else {}))
        for n, p in enumerate(platforms)
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()


def linux(architecture: str, variant: str | None = None) -> dict[str, str]:
    return {"os": "linux", "architecture": architecture} | ({"variant": variant} if variant else {})


def test_parses_an_oci_manifest() -> None:
    parsed = parse_manifest(manifest_json(), MEDIA_TYPE_OCI_MANIFEST)

    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == MEDIA_TYPE_OCI_MANIFEST
    assert parsed.config == Descriptor(OCI_CONFIG, digest(1), 101)
    assert [layer.digest for layer in parsed.layers] == [digest(2), digest(3)]


def test_parses_a_docker_schema2_manifest_with_foreign_layers() -> None:
    foreign = descriptor_json(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        4,
        urls=["https://example.invalid/layer"],
        annotations={"a": "b"},
    )
    data = manifest_json(
        MEDIA_TYPE_DOCKER_MANIFEST,
        config=descriptor_json(DOCKER_CONFIG, 1),
        layers=[descriptor_json("application/vnd.docker.image.rootfs.diff.tar.gzip", 2), foreign],
    )

    parsed = parse_manifest(data, "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")

    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    assert parsed.layers[1].urls == ("https://example.invalid/layer",)
    assert parsed.layers[1].annotations == {"a": "b"}


@pytest.mark.parametrize(
    ("content_type", "media_type"),
    [
        (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST),
        ("application/json", MEDIA_TYPE_OCI_MANIFEST),
        (None, MEDIA_TYPE_OCI_MANIFEST),
    ],
)
def test_media_type_comes_from_the_header_when_the_document_has_none(content_type: str | None, media_type: str) -> None:
    assert parse_manifest(manifest_json(media_type=None), content_type).media_type == media_type


def test_the_documents_media_type_wins_over_the_header() -> None:
    parsed = parse_manifest(manifest_json(MEDIA_TYPE_OCI_MANIFEST), MEDIA_TYPE_DOCKER_MANIFEST)
    assert parsed.media_type == MEDIA_TYPE_OCI_MANIFEST


@pytest.mark.parametrize("media_type", [MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST])
def test_parses_indexes(media_type: str) -> None:
    parsed = parse_manifest(index_json(linux("amd64"), linux("arm64", "v8"), media_type=media_type), None)

    assert isinstance(parsed, ImageIndex)
    assert parsed.media_type == media_type
    assert [entry.platform for entry in parsed.manifests] == [
        Platform("linux", "amd64"),
        Platform("linux", "arm64"),
    ]


def test_an_index_without_media_type_is_recognised_by_its_manifests() -> None:
    document = json.loads(index_json(linux("amd64")))
    del document["mediaType"]
    assert isinstance(parse_manifest(json.dumps(document).encode(), None), ImageIndex)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schema 1"),
        (manifest_json("application/vnd.docker.distribution.manifest.v1+prettyjws"), "schema 1"),
        (manifest_json(schemaVersion=3), "schemaVersion"),
        (manifest_json("application/vnd.example.thing"), "unsupported manifest media type"),
        (manifest_json(mediaType=["x"]), "not a string"),
        (manifest_json(config=descriptor_json("application/vnd.cncf.helm.config.v1+json", 1)), "not a container"),
        (manifest_json(layers=[descriptor_json("application/x-wasm", 2)]), "unsupported layer media type"),
        (manifest_json(layers="nope"), "'layers'"),
        (manifest_json(config=None), "'config'"),
        (manifest_json(layers=[descriptor_json(OCI_LAYER, 2, size=-1)]), "invalid size"),
        (manifest_json(layers=[descriptor_json(OCI_LAYER, 2, size=True)]), "invalid size"),
        (manifest_json(layers=[descriptor_json(OCI_LAYER, 2, digest="sha256:12")]), "invalid digest"),
        (manifest_json(layers=[descriptor_json(OCI_LAYER, 2, urls="x")]), "invalid urls"),
        (manifest_json(layers=[{"digest": digest(2), "size": 1}]), "no mediaType"),
        (manifest_json(layers=[7]), "not a JSON object"),
        (b" " * (4 * 1024 * 1024 + 1), "larger than"),
    ],
)
def test_rejects_bad_manifests(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidManifest, match=reason):
        parse_manifest(data, None)


def test_rejects_a_malformed_platform_in_an_index() -> None:
    with pytest.raises(InvalidManifest, match="invalid platform"):
        parse_manifest(index_json({"os": "linux", "architecture": 7}), None)  # type: ignore[dict-item]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=12), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_raises_only_invalid_manifest(document: Any) -> None:
    with contextlib.suppress(InvalidManifest):
        parse_manifest(json.dumps(document).encode(), None)


@given(
    st.fixed_dictionaries(
        {"schemaVersion": st.just(2)},
        optional={
            "mediaType": st.sampled_from([MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, "x"]),
            "manifests": st.lists(
                st.dictionaries(
                    st.sampled_from(["mediaType", "digest", "size", "platform"]),
                    st.none()
                    | st.integers()
                    | st.text(max_size=4)
                    | st.dictionaries(st.text(max_size=12), st.text(max_size=4)),
                )
            ),
            "config": st.dictionaries(
                st.sampled_from(["mediaType", "digest", "size"]), st.integers() | st.text(max_size=4)
            ),
            "layers": st.lists(
                st.dictionaries(
                    st.sampled_from(["mediaType", "digest", "size", "urls", "annotations"]),
                    st.none()
                    | st.integers()
                    | st.lists(st.text(max_size=3))
                    | st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3)),
                )
            ),
        },
    )
)
def test_manifest_shaped_garbage_raises_only_invalid_manifest(document: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidManifest):
        parse_manifest(json.dumps(document).encode(), None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm64/8", Platform("linux", "arm64")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/6", Platform("linux", "arm", "v6")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("Linux/i686", Platform("linux", "386")),
    ],
)
def test_parses_and_normalises_platforms(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/arm/v7/x", ""])
def test_rejects_malformed_platforms(text: str) -> None:
    with pytest.raises(ValueError, match="os/arch"):
        parse_platform(text)


def test_platform_strings() -> None:
    assert str(Platform("linux", "arm64")) == "linux/arm64"
    assert str(normalize_platform("linux", "arm", "7")) == "linux/arm/v7"


def test_compatible_platforms_fall_back_to_older_variants() -> None:
    assert compatible_platforms(parse_platform("linux/arm/v7")) == [
        Platform("linux", "arm", "v7"),
        Platform("linux", "arm", "v6"),
        Platform("linux", "arm", "v5"),
    ]
    assert compatible_platforms(parse_platform("linux/amd64/v3")) == [
        Platform("linux", "amd64", "v3"),
        Platform("linux", "amd64", "v2"),
        Platform("linux", "amd64"),
    ]
    assert compatible_platforms(parse_platform("linux/amd64")) == [Platform("linux", "amd64")]
    assert compatible_platforms(parse_platform("linux/arm64"))[:2] == [
        Platform("linux", "arm64"),
        Platform("linux", "arm", "v8"),
    ]


def index_of(*platforms: dict[str, str] | None) -> ImageIndex:
    parsed = parse_manifest(index_json(*platforms), None)
    assert isinstance(parsed, ImageIndex)
    return parsed


def test_selects_the_wanted_platform() -> None:
    index = index_of(linux("amd64"), linux("arm64", "v8"), linux("arm", "v7"))

    assert select_manifest(index, parse_platform("linux/amd64")).digest == digest(10)
    assert select_manifest(index, parse_platform("linux/arm64")).digest == digest(11)
    assert select_manifest(index, parse_platform("linux/arm64/v8")).digest == digest(11)
    assert select_manifest(index, parse_platform("linux/arm/v7")).digest == digest(12)


def test_arm64_entries_without_variant_match_v8() -> None:
    index = index_of(linux("amd64"), linux("arm64"))
    assert select_manifest(index, parse_platform("linux/arm64/v8")).digest == digest(11)


def test_prefers_the_best_variant_whatever_the_order() -> None:
    index = index_of(linux("arm", "v5"), linux("arm", "v7"), linux("arm", "v6"))

    assert select_manifest(index, parse_platform("linux/arm/v7")).digest == digest(11)
    assert select_manifest(index, parse_platform("linux/arm/v6")).digest == digest(12)


def test_entries_without_platform_are_the_last_resort() -> None:
    assert select_manifest(index_of(None, linux("amd64")), parse_platform("linux/amd64")).digest == digest(11)
    assert select_manifest(index_of(None), parse_platform("linux/amd64")).digest == digest(10)


def test_skips_attestations_and_artifacts() -> None:
    data = json.loads(index_json(None, linux("amd64")))
    data["manifests"][0]["mediaType"] = "application/vnd.in-toto+json"
    data["manifests"].append(
        descriptor_json(MEDIA_TYPE_OCI_MANIFEST, 99, platform={"os": "unknown", "architecture": "unknown"})
    )
    index = parse_manifest(json.dumps(data).encode(), None)
    assert isinstance(index, ImageIndex)

    assert select_manifest(index, parse_platform("linux/amd64")).digest == digest(11)


def test_no_match_lists_the_available_platforms() -> None:
    index = index_of(linux("amd64"), linux("arm64", "v8"))

    with pytest.raises(NoMatchingPlatform, match=r"linux/s390x .*available: linux/amd64, linux/arm64\)"):
        select_manifest(index, parse_platform("linux/s390x"))
    with pytest.raises(NoMatchingPlatform):
        select_manifest(index, parse_platform("linux/arm/v7"))


def test_digests() -> None:
    assert digest_of(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert digest_of(b"abc", "sha512") == "sha512:" + hashlib.sha512(b"abc").hexdigest()
    hasher = new_hasher("sha512:" + "0" * 128)
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.sha512(b"abc").hexdigest()
    with pytest.raises(ValueError):
        new_hasher("md5:" + "0" * 32)

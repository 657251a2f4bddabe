import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pycri.image.reference import (
    InvalidReference,
    Reference,
    canonical_image_id,
    is_image_id,
    parse_reference,
)

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/img", "docker.io/user/img:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("index.docker.io/user/img", "docker.io/user/img:latest"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost/img", "localhost/img:latest"),
        ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1"),
        ("127.0.0.1:5001/x:y", "127.0.0.1:5001/x:y"),
        ("[::1]:5000/img", "[::1]:5000/img:latest"),
        ("Example.com/img", "Example.com/img:latest"),
        ("a-b_c__d---e/f.g", "docker.io/a-b_c__d---e/f.g:latest"),
        ("localhost:5000", "docker.io/library/localhost:5000"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"quay.io/a/b:tag@{DIGEST}", f"quay.io/a/b:tag@{DIGEST}"),
    ],
)
def test_normalises_like_docker(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_fields_of_a_tag_and_digest_reference() -> None:
    reference = parse_reference(f"localhost:5000/team/app:v2@{DIGEST}")

    assert reference == Reference("localhost:5000", "team/app", "v2", DIGEST)
    assert reference.name == "localhost:5000/team/app"
    assert reference.repo_tag == "localhost:5000/team/app:v2"
    assert reference.repo_digest == f"localhost:5000/team/app@{DIGEST}"
    assert reference.manifest_reference == DIGEST


def test_tag_defaults_to_latest_only_without_a_digest() -> None:
    assert parse_reference("busybox").tag == "latest"
    by_digest = parse_reference(f"busybox@{DIGEST}")
    assert by_digest.tag is None
    assert by_digest.repo_tag is None
    assert by_digest.manifest_reference == DIGEST
    assert parse_reference("busybox").repo_digest is None


def test_with_digest_pins_a_tagged_reference() -> None:
    pinned = parse_reference("busybox:1.36").with_digest(DIGEST)

    assert pinned.repo_digest == f"docker.io/library/busybox@{DIGEST}"
    assert pinned.repo_tag == "docker.io/library/busybox:1.36"
    with pytest.raises(InvalidReference, match="invalid digest"):
        pinned.with_digest("sha256:nothex")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("ab" * 32, "image ID"),
        ("busybox:", "invalid tag"),
        ("busybox:-dash", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("a//b", "invalid repository name"),
        ("-foo", "invalid repository name"),
        ("foo-", "invalid repository name"),
        ("foo/", "invalid repository name"),
        ("foo bar", "invalid repository name"),
        ("localhost:5000/", "invalid repository name"),
        ("-host.io/foo", "invalid registry host"),
        ("under_score.io/foo", "invalid registry host"),
        ("busybox@", "invalid digest"),
        ("busybox@sha256:abc", "64 hex digits"),
        ("busybox@sha256:" + "AB" * 32, "invalid digest"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
        (f"busybox@{DIGEST}@{DIGEST}", "invalid digest"),
        ("a/" * 130 + "b", "longer than 255"),
        ("x" * 2000, "longer than"),
        ("sha256:" + "ab" * 32, "a digest or image ID, not a repository name"),
        ("sha256:zzz", "a digest or image ID, not a repository name"),
        ("sha512:" + "ab" * 32 + "x", "a digest or image ID, not a repository name"),
        ("busy\0box", "invalid repository name"),
    ],
)
def test_rejects_invalid_references_naming_the_input(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason) as raised:
        parse_reference(text)
    assert f"invalid image reference {text[:64]!r}"[:-1] in str(raised.value)


def test_invalid_reference_is_a_value_error() -> None:
    assert issubclass(InvalidReference, ValueError)


@pytest.mark.parametrize("text", ["ab" * 32, f"sha256:{'ab' * 32}"])
def test_image_ids(text: str) -> None:
    assert is_image_id(text)
    assert canonical_image_id(text) == f"sha256:{'ab' * 32}"


@pytest.mark.parametrize("text", ["busybox", "sha256:abc", "AB" * 32, "sha512:" + "ab" * 32, "ab" * 33])
def test_not_image_ids(text: str) -> None:
    assert not is_image_id(text)
    with pytest.raises(InvalidReference):
        canonical_image_id(text)


_component = st.from_regex(r"[a-z0-9]{1,8}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,8}){0,2}", fullmatch=True)
_domain = st.one_of(
    st.none(),
    st.just("localhost"),
    st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,5}(?::[0-9]{1,5})?", fullmatch=True),
    st.from_regex(r"localhost:[0-9]{1,5}", fullmatch=True),
)
_tag = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
_digest = st.one_of(st.none(), st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True))


@given(_domain, st.lists(_component, min_size=1, max_size=4), _tag, _digest)
def test_valid_references_round_trip(
    domain: str | None, components: list[str], tag: str | None, digest: str | None
) -> None:
    # Without a registry, a first component with a dot reads as a host name (as Docker reads it).
    assume(domain is not None or len(components) == 1 or "." not in components[0])
    text = "/".join(([domain] if domain else []) + components)
    text += f":{tag}" if tag else ""
    text += f"@{digest}" if digest else ""

    reference = parse_reference(text)

    assert parse_reference(str(reference)) == reference
    assert reference.name.endswith("/".join(components))
    assert reference.digest == digest
    assert reference.tag == (tag or (None if digest else "latest"))


@given(st.text(max_size=300))
def test_garbage_raises_only_invalid_reference(text: str) -> None:
    try:
        reference = parse_reference(text)
    except InvalidReference:
        return
    assert parse_reference(str(reference)) == reference


@given(st.text(alphabet="abcAB09:/@._-[]sh", max_size=80))
def test_reference_like_garbage_raises_only_invalid_reference(text: str) -> None:
    try:
        reference = parse_reference(text)
    except InvalidReference:
        return
    assert parse_reference(str(reference)) == reference

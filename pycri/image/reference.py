"""Image references: parsing and normalisation as Docker and containerd do it.

The grammar is the distribution reference grammar::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ["/" path-component]*

A bare name is normalised to Docker Hub (``busybox`` becomes
``docker.io/library/busybox:latest``); the tag defaults to ``latest`` only
when there is no digest.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from pycri.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255
# Longest possible reference: name, ":" and a 128-character tag, "@sha512:" and 128 hex digits.
REFERENCE_LENGTH_MAX = NAME_TOTAL_LENGTH_MAX + 1 + 128 + 8 + 128

# Hex length of each digest algorithm the OCI image spec registers.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"

PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-f0-9]+)")
IMAGE_ID_RE = re.compile(r"(?:sha256:)?([a-f0-9]{64})")
IMAGE_ID_PREFIX_RE = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}")


class InvalidReference(ValueError):
    """The text is not a valid image reference."""


@dataclass(frozen=True)
class Reference:
    """A fully normalised image reference."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def repo_tag(self) -> str | None:
        """``name:tag`` as CRI reports it in ``repo_tags``, or None without a tag."""
        return f"{self.name}:{self.tag}" if self.tag is not None else None

    @property
    def repo_digest(self) -> str | None:
        """``name@digest`` as CRI reports it in ``repo_digests``, or None without a digest."""
        return f"{self.name}@{self.digest}" if self.digest is not None else None

    @property
    def manifest_reference(self) -> str:
        """What to ask the registry for: the digest wins over the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        """This reference pinned to ``digest`` (the tag is kept)."""
        _validate_digest(digest, str(self))
        return dataclasses.replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference, or raise InvalidReference."""
    if not isinstance(text, str) or not text:
        raise InvalidReference(f"invalid image reference {text!r}: empty")
    if len(text) > REFERENCE_LENGTH_MAX:
        raise InvalidReference(f"invalid image reference {text[:64]!r}...: longer than {REFERENCE_LENGTH_MAX}")
    if IMAGE_ID_RE.fullmatch(text) and ":" not in text:
        raise InvalidReference(
            f"invalid image reference {text!r}: a 64-character hexadecimal string is an image ID, not a repository name"
        )
    remainder, at, digest = text.partition("@")
    if at:
        _validate_digest(digest, text)
    elif "/" not in text and text.partition(":")[0] in DIGEST_HEX_LENGTHS:
        # Grammatically the repository "sha256" with a tag; in truth a (perhaps mistyped) digest.
        raise InvalidReference(f"invalid image reference {text!r}: a digest or image ID, not a repository name")
    name, tag = _split_tag(remainder)
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise InvalidReference(f"invalid image reference {text!r}: invalid tag {tag!r}")
    domain, path = _split_domain(name, text)
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"invalid image reference {text!r}: repository name longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    if tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest if at else None)


def is_image_id(text: str) -> bool:
    """True when ``text`` is an image ID: 64 hex digits, bare or with the ``sha256:`` prefix."""
    return IMAGE_ID_RE.fullmatch(text) is not None


def check_image_field(text: str, field: str) -> None:
    """InvalidArgument naming `field` unless `text` is an image ID, a prefix of one (hex digits,
    bare or after ``sha256:``) or a valid reference; what an image RPC may be asked about."""
    if not text:
        raise InvalidArgument(f"{field}: an image reference or ID is required")
    if IMAGE_ID_PREFIX_RE.fullmatch(text):
        return
    try:
        parse_reference(text)
    except InvalidReference as exc:
        raise InvalidArgument(f"{field}: {exc}") from None


def canonical_image_id(text: str) -> str:
    """An image ID in its ``sha256:<hex>`` form; raises InvalidReference if ``text`` is not one."""
    match = IMAGE_ID_RE.fullmatch(text)
    if match is None:
        raise InvalidReference(f"{text!r} is not an image ID (sha256:<64 hex digits>)")
    return f"sha256:{match.group(1)}"


def _split_tag(remainder: str) -> tuple[str, str | None]:
    # A colon after the last slash separates the tag; one before it is a registry port.
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        return remainder[:colon], remainder[colon + 1 :]
    return remainder, None


def _split_domain(name: str, text: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_domain = "." in first or ":" in first or first == "localhost" or first.lower() != first
    if slash and looks_like_domain:
        domain, path = first, rest
        if not DOMAIN_RE.fullmatch(domain):
            raise InvalidReference(f"invalid image reference {text!r}: invalid registry host {domain!r}")
        if domain == LEGACY_DEFAULT_DOMAIN:
            domain = DEFAULT_DOMAIN
    else:
        domain, path = DEFAULT_DOMAIN, name
    if path.lower() != path:
        raise InvalidReference(f"invalid image reference {text!r}: repository name must be lowercase")
    if not PATH_RE.fullmatch(path):
        raise InvalidReference(f"invalid image reference {text!r}: invalid repository name {path!r}")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def validate_digest(digest: object) -> str:
    """Return ``digest`` if it is an ``algorithm:hex`` string of a supported algorithm, else raise ValueError."""
    if not isinstance(digest, str) or (match := DIGEST_RE.fullmatch(digest)) is None:
        raise ValueError(f"invalid digest {digest!r}")
    algorithm, hex_digits = match.groups()
    expected_length = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected_length is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    if len(hex_digits) != expected_length:
        raise ValueError(f"{algorithm} digest must have {expected_length} hex digits")
    return digest


def _validate_digest(digest: str, text: str) -> None:
    try:
        validate_digest(digest)
    except ValueError as error:
        raise InvalidReference(f"invalid image reference {text!r}: {error}") from None

"""Checks of the text fields a kubelet copies from what users wrote, before any of it names a file.

The limits are Kubernetes' own, so nothing a kubelet sends is refused: pod and container names and
namespaces are DNS-1123 labels or subdomains (at most 253 characters), and uids are UUIDs or, for
static pods, hex hashes (36 and 32 characters; 128 leaves room for other clients' ids).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pycri.errors import InvalidArgument

MAX_NAME_LENGTH = 253
MAX_UID_LENGTH = 128
MAX_PATH_LENGTH = 4095  # PATH_MAX less its NUL


def has_control_character(value: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)


def check_name(value: str, field: str, max_length: int = MAX_NAME_LENGTH) -> None:
    """InvalidArgument unless `value` can be one component of a path: not empty, no '/', no '..',
    no NUL or other control character, at most `max_length` characters."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_length:
        raise InvalidArgument(f"{field}: {value[:32]!r}... is longer than {max_length} characters")
    if "/" in value or ".." in value or value == "." or has_control_character(value):
        raise InvalidArgument(f"{field}: {value!r} may not hold '/', '..', NUL or control characters")


def _check_path(value: str, field: str) -> PurePosixPath:
    if len(value) > MAX_PATH_LENGTH:
        raise InvalidArgument(f"{field}: longer than {MAX_PATH_LENGTH} characters")
    if "\0" in value:
        raise InvalidArgument(f"{field}: {value!r} holds a NUL character")
    path = PurePosixPath(value)
    if ".." in path.parts:
        raise InvalidArgument(f"{field}: {value!r} may not hold '..'")
    return path


def check_absolute_path(value: str, field: str) -> None:
    """InvalidArgument unless `value` is an absolute path without NUL or '..' components."""
    if not _check_path(value, field).is_absolute():
        raise InvalidArgument(f"{field}: {value!r} is not an absolute path")


def check_relative_path(value: str, field: str) -> None:
    """InvalidArgument unless `value` is a relative path that stays below where it is joined (no '..')."""
    if _check_path(value, field).is_absolute():
        raise InvalidArgument(f"{field}: {value!r} must be relative")

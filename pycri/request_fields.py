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
    """C0 and C1 controls and DEL: nothing a name or a log file's path needs, and NUL ends a C string."""
    return any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in value)


def _has_space(value: str) -> bool:
    # Kubernetes names and log paths never hold one, nor anything but ASCII; conmon, which gets
    # the container's name and log path, dies on a space or on non-ASCII text in either.
    return any(char.isspace() for char in value) or not value.isascii()


def check_name(value: str, field: str, max_length: int = MAX_NAME_LENGTH) -> None:
    """InvalidArgument unless `value` can be one component of a path and a CNI_ARGS value: not
    empty, ASCII, no '/', ';', '..', space, NUL or other control character, at most `max_length` characters."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_length:
        raise InvalidArgument(f"{field}: {value[:32]!r}... is longer than {max_length} characters")
    # ';' separates CNI_ARGS, which carry the pod's name, namespace and uid to the plugins.
    unsafe = any(char in value for char in "/;") or ".." in value or value == "."
    if unsafe or has_control_character(value) or _has_space(value):
        raise InvalidArgument(
            f"{field}: {value!r} may not hold '/', ';', '..', spaces, non-ASCII, NUL or control characters"
        )


def _check_path(value: str, field: str) -> PurePosixPath:
    if len(value) > MAX_PATH_LENGTH:
        raise InvalidArgument(f"{field}: longer than {MAX_PATH_LENGTH} characters")
    if has_control_character(value) or _has_space(value):
        raise InvalidArgument(f"{field}: {value!r} holds a space, non-ASCII text, NUL or another control character")
    path = PurePosixPath(value)
    if ".." in path.parts:
        raise InvalidArgument(f"{field}: {value!r} may not hold '..'")
    return path


def check_absolute_path(value: str, field: str) -> None:
    """InvalidArgument unless `value` is an absolute path without '..' components, spaces or control characters."""
    if not _check_path(value, field).is_absolute():
        raise InvalidArgument(f"{field}: {value!r} is not an absolute path")


def check_relative_path(value: str, field: str) -> None:
    """InvalidArgument unless `value` is a relative path that stays below where it is joined (no '..')."""
    if _check_path(value, field).is_absolute():
        raise InvalidArgument(f"{field}: {value!r} must be relative")

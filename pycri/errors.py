"""The errors services raise; the gRPC layer turns each into its status code."""

from __future__ import annotations

import grpc


class PycriError(Exception):
    """Base of errors that reach the caller with a chosen gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(PycriError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PycriError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PycriError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(PycriError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(PycriError):
    """A dependency (registry, runtime binary) could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(PycriError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(PycriError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(PycriError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(PycriError):
    """A registry refused the credentials (or their absence)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class DataLoss(PycriError):
    """Content did not match its digest, or a layer could not be unpacked safely."""

    code = grpc.StatusCode.DATA_LOSS


class RuntimeFailure(PycriError):
    """The OCI runtime or conmon refused; the message carries their words."""

    code = grpc.StatusCode.UNKNOWN

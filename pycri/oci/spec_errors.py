"""The error raised for a container or sandbox config that cannot become an OCI spec."""

from __future__ import annotations

from pycri.errors import InvalidArgument


class SpecError(InvalidArgument, ValueError):
    """Invalid input; the message names the CRI field at fault, e.g. "linux.security_context.run_as_user: ..."."""

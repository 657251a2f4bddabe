"""ExecSync output past the CRI message limit is cut, not refused: each stream keeps its first bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.api import api_pb2
from pycri.oci.runtime import EXEC_OUTPUT_LIMIT, fit_exec_output

pytestmark = pytest.mark.unit

CRI_MESSAGE_LIMIT = 16 * 1024 * 1024


@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 400))
def test_output_fits_and_keeps_the_first_bytes(stdout_size: int, stderr_size: int, limit: int) -> None:
    stdout, stderr = b"o" * stdout_size, b"e" * stderr_size
    kept_stdout, kept_stderr = fit_exec_output(stdout, stderr, limit)
    assert stdout.startswith(kept_stdout) and stderr.startswith(kept_stderr)
    assert len(kept_stdout) + len(kept_stderr) == min(stdout_size + stderr_size, limit)
    if stdout_size + stderr_size <= limit:
        assert (kept_stdout, kept_stderr) == (stdout, stderr)
    # A stream under half the limit is never cut.
    for size, kept in ((stdout_size, kept_stdout), (stderr_size, kept_stderr)):
        if size <= limit // 2:
            assert len(kept) == size


def test_the_largest_reply_fits_the_cri_message_limit() -> None:
    stdout, stderr = fit_exec_output(b"o" * CRI_MESSAGE_LIMIT, b"e" * CRI_MESSAGE_LIMIT, EXEC_OUTPUT_LIMIT)
    reply = api_pb2.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=-(2**31))
    assert reply.ByteSize() <= CRI_MESSAGE_LIMIT
    assert len(stdout) == EXEC_OUTPUT_LIMIT // 2

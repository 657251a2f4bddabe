"""crictl, the tool people use, against pycri: version and info."""

import json

import pytest

from tests.support.crictl import crictl_ok, needs_crictl
from tests.support.daemon import PycriProcess

pytestmark = [pytest.mark.integration, needs_crictl]


def test_crictl_version(pycri: PycriProcess) -> None:
    out = crictl_ok(pycri.endpoint, "version")
    assert "RuntimeName:  pycri" in out
    assert "RuntimeApiVersion:  v1" in out


def test_crictl_info_shows_conditions(pycri: PycriProcess) -> None:
    info = json.loads(crictl_ok(pycri.endpoint, "info"))
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is True
    assert "hostInfo" in info

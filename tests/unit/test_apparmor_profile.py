"""pycri's default AppArmor profile compiles with the real parser (without loading it)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from pycri.oci.apparmor import compile_profile, default_profile_text, load_default_profile
from pycri.oci.spec_security import APPARMOR_DEFAULT_PROFILE

pytestmark = pytest.mark.unit
PARSER = shutil.which("apparmor_parser") or "/sbin/apparmor_parser"


def test_the_profile_is_named_as_the_spec_asks() -> None:
    assert f"profile {APPARMOR_DEFAULT_PROFILE} " in default_profile_text()


@pytest.mark.skipif(not Path(PARSER).exists(), reason="apparmor_parser is not installed (Debian package apparmor)")
def test_the_profile_compiles() -> None:
    asyncio.run(compile_profile(default_profile_text(), Path(PARSER), load=False, timeout=60))


@pytest.mark.skipif(not Path(PARSER).exists(), reason="apparmor_parser is not installed (Debian package apparmor)")
def test_a_broken_profile_is_refused_with_the_parsers_words() -> None:
    with pytest.raises(RuntimeError, match="apparmor_parser"):
        asyncio.run(compile_profile("profile broken {", Path(PARSER), load=False, timeout=60))


def test_without_apparmor_the_status_says_runtime_default_is_unconfined(tmp_path: Path) -> None:
    if Path("/sys/module/apparmor/parameters/enabled").exists():
        pytest.skip("AppArmor is enabled on this host")
    assert "unconfined" in asyncio.run(load_default_profile(Path(PARSER), timeout=60))

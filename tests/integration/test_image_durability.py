"""Blobs and snapshots are durable before they count as stored: an image import traced with
strace shows each blob fsynced before its rename and its directory fsynced after, and each
unpacked layer synced (syncfs) before its rename into the snapshots directory, which is then
fsynced."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMPORT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from pycri.config import Config
from pycri.image.service import ImageService
from pycri.state.store import Store
from tests.integration.test_image_recovery import source_of, two_layer_image

async def main(base: Path) -> None:
    config = Config(root_dir=base / "root", state_dir=base / "state")
    config.root_dir.mkdir(parents=True)
    store = Store(config.db_path)
    images = ImageService(config, store)
    await images.import_image(source_of(two_layer_image("durable")), ["example.com/durable:1"], [], "test")
    store.close()

asyncio.run(main(Path(sys.argv[1])))
"""
_RENAME = re.compile(r'rename(?:at2?)?\(.*?"([^"]+)",.*?"([^"]+)"')


def traced_import(tmp_path: Path) -> list[str]:
    script, log = tmp_path / "import.py", tmp_path / "strace.log"
    script.write_text(IMPORT_SCRIPT)
    command = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,syncfs,rename,renameat,renameat2", "-o", str(log)]
    subprocess.run(
        [*command, sys.executable, str(script), str(tmp_path / "node")],
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return log.read_text().splitlines()


def renames(lines: list[str], into: str) -> list[tuple[int, str, str]]:
    found = []
    for index, line in enumerate(lines):
        match = _RENAME.search(line)
        if match and Path(match.group(2)).parent == Path(into):
            found.append((index, match.group(1), match.group(2)))
    return found


def synced(lines: list[str], call: str, path: str) -> list[int]:
    """Line numbers of `call` on an fd strace shows as `path`."""
    return [index for index, line in enumerate(lines) if f"{call}(" in line and f"<{path}>" in line]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_blobs_and_snapshots_are_synced_around_their_rename(tmp_path: Path) -> None:
    lines = traced_import(tmp_path)
    root = tmp_path / "node" / "root"

    blobs = renames(lines, str(root / "content" / "sha256"))
    assert len(blobs) >= 3  # config, manifest and the layers on their way to unpacking
    for index, temp, final in blobs:
        assert any(at < index for at in synced(lines, "fsync", temp)), f"{final} renamed before its data was fsynced"
        after = synced(lines, "fsync", str(root / "content" / "sha256"))
        assert any(at > index for at in after), f"the directory of {final} was not fsynced after the rename"

    snapshots = renames(lines, str(root / "snapshots"))
    assert len(snapshots) == 2
    for index, temp, final in snapshots:
        assert any(at < index for at in synced(lines, "syncfs", temp)), f"{final} renamed before its files were synced"
        assert any(at > index for at in synced(lines, "fsync", str(root / "snapshots"))), final

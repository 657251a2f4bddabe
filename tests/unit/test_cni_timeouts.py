"""A CNI plugin that outlasts the plugin timeout is killed with what it started and reported by
plugin, command and seconds. The plugins are small scripts: real processes that hang."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from pycri.network.cni_config import NetworkConfig
from pycri.network.cni_exec import CniNetwork, CniTimeout, PluginRunner, RuntimeConf

pytestmark = pytest.mark.unit

RUNTIME = RuntimeConf("abc", "/var/run/netns/none", "eth0")
VERSIONS = '{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}'


def hanging_plugin(bin_dir: Path, name: str, hang_on: str) -> Path:
    """A plugin that answers VERSION, hangs (in a child it waits for) on `hang_on` and records
    its pids in <bin_dir>/<name>.pids."""
    bin_dir.mkdir(exist_ok=True)
    pids = bin_dir / f"{name}.pids"
    script = bin_dir / name
    script.write_text(
        f"#!/bin/sh\necho $$ >> {pids}\n"
        f"if [ \"$CNI_COMMAND\" = VERSION ]; then echo '{VERSIONS}'; exit 0; fi\n"
        f'if [ "$CNI_COMMAND" = {hang_on} ]; then sleep 600 & echo $! >> {pids}; wait; fi\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return pids


def alive(pids: Path) -> list[int]:
    running = []
    for pid in (int(text) for text in pids.read_text().split()):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
async def test_a_plugin_past_the_timeout_is_killed_and_named(tmp_path: Path, command: str) -> None:
    pids = hanging_plugin(tmp_path / "bin", "slowpoke", command)
    runner = PluginRunner([tmp_path / "bin"], timeout=0.5)

    with pytest.raises(CniTimeout, match=rf"CNI plugin slowpoke failed \({command}\): no answer within 0.5s") as raised:
        await runner.run("slowpoke", command, {"cniVersion": "1.0.0", "type": "slowpoke"}, RUNTIME)

    assert (raised.value.plugin, raised.value.command, raised.value.seconds) == ("slowpoke", command, 0.5)
    assert len(pids.read_text().split()) == 2  # the plugin and its sleep
    assert alive(pids) == []


async def test_a_hanging_delete_still_lets_the_rest_of_the_chain_run(tmp_path: Path) -> None:
    hanging_plugin(tmp_path / "bin", "ipam", "ADD")
    pids = hanging_plugin(tmp_path / "bin", "stuck", "DEL")
    network = CniNetwork(
        NetworkConfig("n", "1.0.0", ({"type": "ipam"}, {"type": "stuck"})), PluginRunner([tmp_path / "bin"], 0.5)
    )

    with pytest.raises(CniTimeout, match=r"stuck failed \(DEL\): no answer within 0.5s"):
        await network.delete(RUNTIME, None)

    assert alive(pids) == []
    assert len((tmp_path / "bin" / "ipam.pids").read_text().split()) == 1  # ipam's DEL ran after stuck's

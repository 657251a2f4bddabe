"""`pycri check`: what it finds on hosts made of fake files and programs, and on this host."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pycri.cgroups import CgroupLayout
from pycri.cli import main
from pycri.config import Config, HandlerConfig
from pycri.hostcheck import Check, HostFiles, check_host, render
from pycri.hostinfo import collect_host_info

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("keep_root_logger")]

V1_LAYOUT = CgroupLayout(
    v1={name: Path(f"/sys/fs/cgroup/{name}") for name in ("cpu", "cpuacct", "devices", "freezer", "memory", "pids")}
)


def program(path: Path, *lines: str) -> Path:
    """A stand-in for runc, conmon or a CNI plugin that prints `lines`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    path.chmod(0o755)
    return path


@dataclasses.dataclass
class FakeHost:
    tmp: Path
    config: Config
    files: HostFiles

    def checks(self, layout: CgroupLayout = V1_LAYOUT) -> dict[str, Check]:
        found = check_host(self.config, collect_host_info(self.config), layout, self.files)
        return {check.name: check for check in found}


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """A host where everything pycri needs is there."""
    bin_dir = tmp_path / "cni"
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        program(bin_dir / plugin, "CNI plugin")
    config = Config()
    config.runtime.handlers = {
        "runc": HandlerConfig(program(tmp_path / "bin" / "runc", "runc version 1.1.5", "libseccomp: 2.5.4"))
    }
    config.runtime.conmon = program(tmp_path / "bin" / "conmon", "conmon version 2.1.6")
    config.cni.bin_dirs = [bin_dir]
    config.cni.conf_dir = tmp_path / "net.d"
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tproc\nnodev\toverlay\n")
    status = tmp_path / "status"
    status.write_text("Name:\tpycri\nSeccomp:\t0\nSeccomp_filters:\t0\n")
    files = HostFiles(
        filesystems=filesystems,
        process_status=status,
        modules_dir=tmp_path / "modules",
        systemd_dir=tmp_path / "no-systemd",
        apparmor_enabled=tmp_path / "apparmor-enabled",
        apparmor_parser=tmp_path / "apparmor_parser",
        euid=0,
    )
    return FakeHost(tmp_path, config, files)


def test_a_ready_host_passes_every_check(host: FakeHost) -> None:
    checks = host.checks()
    assert [name for name, check in checks.items() if not check.ok] == []
    assert "libseccomp: 2.5.4" in checks["runtime runc"].found
    assert "pycri writes its default" in checks["CNI network"].found
    assert render(list(checks.values())).endswith("this host can run pycri\n")


def test_missing_programs_say_which_package_to_install(host: FakeHost) -> None:
    host.config.runtime.conmon = host.tmp / "gone" / "conmon"
    host.config.runtime.handlers["runc"] = HandlerConfig(host.tmp / "gone" / "runc")
    (host.tmp / "cni" / "portmap").unlink()
    checks = host.checks()
    assert (checks["conmon"].status, checks["conmon"].fix) == ("MISSING", "apt-get install conmon")
    assert (checks["runtime runc"].status, checks["runtime runc"].fix) == ("MISSING", "apt-get install runc")
    assert checks["CNI plugin portmap"].status == "MISSING"
    assert "apt-get install containernetworking-plugins" in checks["CNI plugin portmap"].fix
    text = render(list(checks.values()))
    assert "fix: apt-get install conmon" in text and text.endswith("3 required check(s) failed\n")


def test_a_runtime_without_seccomp_is_refused_and_an_extra_handler_only_warns(host: FakeHost) -> None:
    host.config.runtime.handlers["kata"] = HandlerConfig(program(host.tmp / "bin" / "kata", "kata 3.0"))
    host.config.runtime.handlers["crun"] = HandlerConfig(
        program(host.tmp / "bin" / "crun", "crun version 1.8.1", "spec: 1.0.0", "+SYSTEMD +SECCOMP +YAJL")
    )
    checks = host.checks()
    assert checks["runtime crun"].ok and "+SECCOMP" in checks["runtime crun"].found
    assert checks["runtime kata"].status == "warning"
    assert "without seccomp" in checks["runtime kata"].found
    host.config.runtime.default_handler = "kata"
    assert host.checks()["runtime kata"].status == "MISSING"


def test_cgroup_controllers_and_the_systemd_driver(host: FakeHost) -> None:
    without_memory = CgroupLayout(v1={k: v for k, v in V1_LAYOUT.v1.items() if k != "memory"})
    cgroups = host.checks(without_memory)["cgroups"]
    assert cgroups.status == "MISSING" and "memory" in cgroups.found
    unified = host.tmp / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert host.checks(CgroupLayout(unified=unified))["cgroups"].found.startswith(f"v2 at {unified}")
    host.config.runtime.cgroup_driver = "systemd"
    driver = host.checks()["cgroup driver"]
    assert driver.status == "MISSING" and 'runtime.cgroup_driver = "cgroupfs"' in driver.fix
    host.files.systemd_dir.mkdir()
    assert host.checks()["cgroup driver"].ok


def test_overlay_as_a_module_and_without_it(host: FakeHost) -> None:
    host.files.filesystems.write_text("nodev\tproc\n")
    overlay = host.checks()["overlayfs"]
    assert overlay.status == "MISSING" and "modprobe overlay" in overlay.fix
    host.files.modules_dir.mkdir()
    (host.files.modules_dir / "modules.dep").write_text("kernel/fs/overlayfs/overlay.ko.xz:\n")
    assert host.checks()["overlayfs"].ok


def test_apparmor_enabled_without_its_parser_is_a_warning(host: FakeHost) -> None:
    host.files.apparmor_enabled.write_text("Y\n")
    apparmor = host.checks()["AppArmor"]
    assert (apparmor.status, apparmor.fix) == ("warning", "apt-get install apparmor")
    program(host.files.apparmor_parser)
    assert host.checks()["AppArmor"].ok


def test_kernel_without_seccomp_and_not_root(host: FakeHost) -> None:
    host.files.process_status.write_text("Name:\tpycri\n")
    checks = host.checks()
    assert checks["seccomp"].status == "MISSING"
    host = dataclasses.replace(host, files=dataclasses.replace(host.files, euid=1000))
    assert host.checks()["root"].status == "MISSING"


def test_the_command_exits_1_when_something_required_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pycri.toml"
    config.write_text(f'[runtime]\nconmon = "{tmp_path}/no/conmon"\n')
    assert main(["--config", str(config), "check"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  conmon" in out and "fix: apt-get install conmon" in out


@pytest.mark.integration
def test_this_host_can_run_pycri(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Root on a host set up by scripts/install.sh: every required check passes."""
    config = tmp_path / "pycri.toml"
    config.write_text(f'[cni]\nconf_dir = "{tmp_path}/net.d"\n')
    status = main(["--config", str(config), "check"])
    out = capsys.readouterr().out
    assert status == 0, out
    for name in ("root", "runtime runc", "conmon", "CNI plugin bridge", "iptables", "cgroups", "overlayfs", "seccomp"):
        assert any(line.startswith("ok") and f" {name} " in line for line in out.splitlines()), name
    assert out.endswith("this host can run pycri\n")

"""The pod's hostname, hosts and resolv.conf files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.sandbox import files

pytestmark = pytest.mark.unit


def test_resolv_conf_from_dns_config(tmp_path: Path) -> None:
    dns = api_pb2.DNSConfig(
        servers=["10.96.0.10", "fd00::a"],
        searches=["default.svc.cluster.local", "svc.cluster.local"],
        options=["ndots:5"],
    )
    files.write_resolv_conf(tmp_path / "resolv.conf", dns)
    assert (tmp_path / "resolv.conf").read_text() == (
        "search default.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\n"
        "nameserver fd00::a\n"
        "options ndots:5\n"
    )


def test_empty_dns_config_copies_the_hosts_resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host-resolv.conf"
    host.write_text("nameserver 192.0.2.53\n")
    monkeypatch.setattr(files, "HOST_RESOLV_CONF", host)
    files.write_resolv_conf(tmp_path / "resolv.conf", api_pb2.DNSConfig())
    assert (tmp_path / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert (tmp_path / "resolv.conf").stat().st_mode & 0o777 == 0o644


def test_hosts_lists_localhost_and_the_pod_ips(tmp_path: Path) -> None:
    files.write_hosts(tmp_path / "hosts", "web-0", ["10.85.0.7", "fd00::7"], host_network=False)
    lines = (tmp_path / "hosts").read_text().splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[-2:] == ["10.85.0.7\tweb-0", "fd00::7\tweb-0"]


def test_host_network_pod_gets_the_hosts_file_of_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host-hosts"
    host.write_text("127.0.0.1 localhost\n192.0.2.1 node\n")
    monkeypatch.setattr(files, "HOST_HOSTS", host)
    files.write_hosts(tmp_path / "hosts", "node", ["192.0.2.1"], host_network=True)
    assert (tmp_path / "hosts").read_text() == host.read_text()


def test_hostname_file(tmp_path: Path) -> None:
    files.write_hostname(tmp_path / "hostname", "web-0")
    assert (tmp_path / "hostname").read_text() == "web-0\n"

"""The files a pod's containers see as /etc/hostname, /etc/hosts and /etc/resolv.conf."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pycri.api import api_pb2

HOST_HOSTS = Path("/etc/hosts")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
FILE_MODE = 0o644

LOCALHOST_ENTRIES = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def _write(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "w") as file:
        file.write(content)


def _copy(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError:
        _write(target, "")
    os.chmod(target, FILE_MODE)


def render_resolv_conf(dns: api_pb2.DNSConfig) -> str:
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "".join(line + "\n" for line in lines)


def has_dns_config(dns: api_pb2.DNSConfig) -> bool:
    return bool(dns.servers or dns.searches or dns.options)


def write_hostname(path: Path, hostname: str) -> None:
    _write(path, hostname + "\n")


def write_resolv_conf(path: Path, dns: api_pb2.DNSConfig) -> None:
    """The pod's DNSConfig; a pod without one gets a copy of the host's resolv.conf."""
    if has_dns_config(dns):
        _write(path, render_resolv_conf(dns))
    else:
        _copy(HOST_RESOLV_CONF, path)


def render_hosts(hostname: str, ips: Sequence[str]) -> str:
    return LOCALHOST_ENTRIES + "".join(f"{ip}\t{hostname}\n" for ip in ips if hostname)


def write_hosts(path: Path, hostname: str, ips: Sequence[str], *, host_network: bool) -> None:
    """A host-network pod sees the host's /etc/hosts; any other gets localhost and its own IPs."""
    if host_network:
        _copy(HOST_HOSTS, path)
    else:
        _write(path, render_hosts(hostname, ips))

"""Which sysctls a pod may set, and how their names map to /proc/sys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.errors import InvalidArgument
from pycri.sandbox.sysctls import Sysctl, parse_sysctls

pytestmark = pytest.mark.unit


def parse_one(name: str, value: str = "1", *, host_network: bool = False, host_ipc: bool = False) -> Sysctl:
    (sysctl,) = parse_sysctls({name: value}, host_network=host_network, host_ipc=host_ipc)
    return sysctl


@pytest.mark.parametrize(
    ("name", "namespace"),
    [
        ("net.ipv4.ip_unprivileged_port_start", "net"),
        ("net.core.somaxconn", "net"),
        ("kernel.shmmax", "ipc"),
        ("kernel.shm_rmid_forced", "ipc"),
        ("kernel.msgmax", "ipc"),
        ("kernel.sem", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
    ],
)
def test_namespaced_sysctls(name: str, namespace: str) -> None:
    sysctl = parse_one(name)
    assert sysctl.namespace == namespace
    assert sysctl.parts == tuple(name.split("."))
    assert sysctl.name == name


def test_slash_form_keeps_dots_inside_components() -> None:
    sysctl = parse_one("net/ipv4/conf/eth0.100/forwarding")
    assert sysctl.parts == ("net", "ipv4", "conf", "eth0.100", "forwarding")
    assert sysctl.name == "net.ipv4.conf.eth0/100.forwarding"


def test_dotted_form_slash_stands_for_a_dot() -> None:
    assert parse_one("net.ipv4.conf.eth0/100.forwarding").parts == ("net", "ipv4", "conf", "eth0.100", "forwarding")


@pytest.mark.parametrize("name", ["kernel.hostname", "vm.swappiness", "kernel.pid_max", "fs.file-max", "net"])
def test_host_wide_sysctls_are_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidArgument, match=f"'{name}' is not namespaced"):
        parse_one(name)


@pytest.mark.parametrize("name", ["net..core", ".net.core.somaxconn", "net/../../etc", "net.ipv4./", "net.a\0b"])
def test_malformed_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="sysctl"):
        parse_one(name)


def test_net_sysctl_on_a_host_network_pod_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="host network"):
        parse_one("net.core.somaxconn", host_network=True)
    assert parse_one("kernel.shmmax", host_network=True).namespace == "ipc"


def test_ipc_sysctl_on_a_host_ipc_pod_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="host IPC"):
        parse_one("kernel.msgmax", host_ipc=True)
    assert parse_one("net.core.somaxconn", host_ipc=True).namespace == "net"


def test_multi_line_values_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="single line"):
        parse_one("net.core.somaxconn", "1\n2")


@given(st.text(min_size=1, max_size=40))
def test_parts_never_leave_proc_sys(name: str) -> None:
    try:
        sysctl = parse_one(name)
    except InvalidArgument:
        return
    assert all(part not in ("", ".", "..") and "/" not in part for part in sysctl.parts)

"""Pod networking with the real CNI plugins (bridge, host-local, portmap, loopback), as root.

Everything here is private to the test run: a temporary conf dir holding pycri's default
network with a test bridge (pycrit<random>), a test subnet (10.233.<random>.0/24) and a
temporary host-local data dir; a temporary result cache; namespaces the tests create.
Traffic goes only to 127.0.0.1 and to those namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from pycri.network.cni import CniManager, CniResult, PodAttachment, PortMapping
from pycri.network.cni_config import DEFAULT_CONFLIST_FILE, default_conflist, installed_default_config
from pycri.network.cni_exec import DEFAULT_BIN_DIRS, CniError, CniPluginNotFound
from pycri.network.netns import create_netns, in_netns, interface_stats, remove_namespace

pytestmark = pytest.mark.integration

BUSYBOX = "/bin/busybox"
POD_PORT = 8080
SHARED_PORTMAP_JUMPS = (
    ("PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"),
)
SHARED_PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


@dataclass(frozen=True)
class PrivateNetwork:
    conf_dir: Path
    cache_dir: Path
    ipam_dir: Path
    bridge: str
    subnet: str


def nat_rules() -> str:
    return subprocess.run(["iptables-save", "-t", "nat"], check=True, capture_output=True, text=True).stdout


def remove_shared_portmap_chains() -> None:
    """Drop portmap's shared chains once no pod uses them (they hold only the plugin's fixed rules)."""
    if ":CNI-DN-" in nat_rules():
        return
    for jump in SHARED_PORTMAP_JUMPS:
        subprocess.run(["iptables", "-t", "nat", "-D", *jump], capture_output=True)
    for chain in SHARED_PORTMAP_CHAINS:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)


def remove_leftover_nat_rules(container_id: str) -> None:
    """Remove nat rules and chains still naming `container_id`.

    Debian's bridge plugin (1.1.1) finds the addresses whose masquerade rules it removes on DEL
    inside the pod's netns; when the namespace or eth0 is already gone, those rules stay.
    """
    rules = [line for line in nat_rules().splitlines() if line.startswith("-A ") and container_id in line]
    if not rules:
        return
    targets = {line.split()[-1] for line in rules}
    chains = {t for t in targets if t.startswith("CNI-") and t not in SHARED_PORTMAP_CHAINS}
    script = ["*nat", *(f"-D {line[3:]}" for line in rules)]
    script += [f"-F {chain}" for chain in chains] + [f"-X {chain}" for chain in chains] + ["COMMIT", ""]
    subprocess.run(["iptables-restore", "--noflush"], input="\n".join(script), text=True, check=True)


@pytest.fixture(scope="module")
def test_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNetwork]:
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not any((directory / plugin).exists() for directory in DEFAULT_BIN_DIRS):
            pytest.skip(f"CNI plugin {plugin} is not installed (Debian package containernetworking-plugins)")
    base = tmp_path_factory.mktemp("cni")
    network = PrivateNetwork(
        conf_dir=base / "net.d",
        cache_dir=base / "cache",
        ipam_dir=base / "ipam",
        bridge=f"pycrit{secrets.token_hex(3)}",
        subnet=f"10.233.{secrets.randbelow(256)}.0/24",
    )
    installed_default_config(network.conf_dir, network.subnet, bridge=network.bridge, ipam_data_dir=network.ipam_dir)
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding_before = forwarding.read_text()
    portmap_chains_before = ":CNI-HOSTPORT-DNAT" in nat_rules()
    yield network
    subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)
    # The bridge plugin turns forwarding on for its gateway; the tests never need it.
    forwarding.write_text(forwarding_before)
    if not portmap_chains_before:
        remove_shared_portmap_chains()


@pytest.fixture
def manager(test_network: PrivateNetwork) -> CniManager:
    return CniManager(test_network.conf_dir, DEFAULT_BIN_DIRS, test_network.cache_dir)


@pytest.fixture
async def pods(tmp_path: Path, manager: CniManager) -> AsyncIterator[list[PodAttachment]]:
    """Pod attachments the test fills; each gets a fresh netns; all are detached and removed after."""
    made: list[PodAttachment] = []
    yield made
    for attachment in made:
        with contextlib.suppress(CniError):
            await manager.delete(attachment)
        remove_namespace(attachment.netns_path)
        remove_leftover_nat_rules(attachment.container_id)


def new_pod(pods: list[PodAttachment], tmp_path: Path, **extra: object) -> PodAttachment:
    container_id = secrets.token_hex(16)
    netns_path = tmp_path / "netns" / container_id
    create_netns(netns_path)
    attachment = PodAttachment(container_id, netns_path, f"pod-{len(pods)}", "default", f"uid-{container_id}", **extra)
    pods.append(attachment)
    return attachment


def ip_files(test_network: PrivateNetwork) -> list[str]:
    store = test_network.ipam_dir / "pycri"
    if not store.exists():
        return []
    return sorted(p.name for p in store.iterdir() if p.name not in ("lock",) and not p.name.startswith("last_"))


@contextlib.contextmanager
def http_server(netns_path: Path, tmp_path: Path, body: str) -> Iterator[None]:
    """busybox httpd inside the pod's netns on POD_PORT; stopped (by its pid) afterwards."""
    root = tmp_path / f"www-{secrets.token_hex(4)}"
    root.mkdir()
    (root / "index.html").write_text(body)
    command = ["nsenter", f"--net={netns_path}", BUSYBOX, "httpd", "-f", "-p", str(POD_PORT), "-h", str(root)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        server.kill()
        server.wait()


def http_get(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        response = b""
        while chunk := conn.recv(4096):
            response += chunk
    return response.decode().split("\r\n\r\n", 1)[-1]


def wait_for_http(host: str, port: int) -> str:
    """The page once the server answers; the deadline only bounds a broken run."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return http_get(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def pod_addresses(netns_path: Path, ifname: str) -> list[str]:
    async with in_netns(netns_path) as ipr:
        return [a.get("address") async for a in await ipr.addr("dump", label=ifname)]


async def test_network_is_ready(manager: CniManager) -> None:
    await manager.status()


async def test_add_gives_the_pod_an_ip_reachable_from_the_host(
    manager: CniManager, pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    pod = new_pod(pods, tmp_path)
    result = await manager.add(pod)

    assert len(result.ips) == 1 and ip_address(result.primary_ip) in ip_network(test_network.subnet)
    assert await pod_addresses(pod.netns_path, "eth0") == [result.primary_ip]
    assert await pod_addresses(pod.netns_path, "lo") == ["127.0.0.1"]
    assert ip_files(test_network) == [result.primary_ip]
    assert {i.name for i in result.interfaces if i.sandbox} == {"eth0"}
    cached = sorted(p.name for p in (test_network.cache_dir / "results").iterdir())
    assert cached == [f"cni-loopback-{pod.container_id}-lo", f"pycri-{pod.container_id}-eth0"]

    with http_server(pod.netns_path, tmp_path, "hello from the pod"):
        assert wait_for_http(result.primary_ip, POD_PORT) == "hello from the pod"
    stats = await interface_stats(pod.netns_path, "eth0")
    assert stats.rx_bytes > 0 and stats.tx_bytes > 0

    await manager.delete(pod)
    assert ip_files(test_network) == []
    assert await pod_addresses(pod.netns_path, "eth0") == []
    assert pod.container_id not in nat_rules()
    assert not list((test_network.cache_dir / "results").iterdir())
    await manager.delete(pod)


async def test_two_pods_reach_each_other(manager: CniManager, pods: list[PodAttachment], tmp_path: Path) -> None:
    server_pod, client_pod = new_pod(pods, tmp_path), new_pod(pods, tmp_path)
    server, client = await asyncio.gather(manager.add(server_pod), manager.add(client_pod))
    assert server.primary_ip != client.primary_ip
    with http_server(server_pod.netns_path, tmp_path, "pod to pod"):
        wait_for_http(server.primary_ip, POD_PORT)
        url = f"http://{server.primary_ip}:{POD_PORT}/index.html"
        fetch = ["nsenter", f"--net={client_pod.netns_path}", BUSYBOX, "wget", "-q", "-O", "-", url]
        assert subprocess.run(fetch, check=True, capture_output=True, text=True).stdout == "pod to pod"


async def test_host_port_on_localhost_reaches_the_pod(
    manager: CniManager, pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    host_port = free_local_port()
    pod = new_pod(pods, tmp_path, port_mappings=(PortMapping(host_port, POD_PORT, "TCP"),))
    await manager.add(pod)
    # portmap with "snat": true sets route_localnet on the bridge so 127.0.0.1 may be DNATed out of it.
    assert Path(f"/proc/sys/net/ipv4/conf/{test_network.bridge}/route_localnet").read_text().strip() == "1"
    with http_server(pod.netns_path, tmp_path, "via the host port"):
        assert wait_for_http("127.0.0.1", host_port) == "via the host port"
    assert f"--dport {host_port}" in nat_rules()
    await manager.delete(pod)
    assert f"--dport {host_port}" not in nat_rules()


async def test_delete_works_from_the_cache_after_a_restart_with_no_config(
    pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    conf_dir = tmp_path / "net.d"
    config = default_conflist(test_network.subnet, test_network.bridge, test_network.ipam_dir)
    conf_dir.mkdir()
    (conf_dir / DEFAULT_CONFLIST_FILE).write_text(json.dumps(config))
    pod = new_pod(pods, tmp_path, port_mappings=(PortMapping(free_local_port(), POD_PORT),))
    await CniManager(conf_dir, DEFAULT_BIN_DIRS, test_network.cache_dir).add(pod)
    (conf_dir / DEFAULT_CONFLIST_FILE).unlink()

    restarted = CniManager(conf_dir, DEFAULT_BIN_DIRS, test_network.cache_dir)
    await restarted.delete(pod)
    assert ip_files(test_network) == []
    assert pod.container_id not in nat_rules()
    await restarted.delete(pod)


async def test_delete_after_the_netns_is_gone_still_releases_the_ip(
    manager: CniManager, pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    pod = new_pod(pods, tmp_path)
    await manager.add(pod)
    remove_namespace(pod.netns_path)
    await manager.delete(pod)
    assert ip_files(test_network) == []
    assert not list((test_network.cache_dir / "results").iterdir())


async def test_gc_deletes_attachments_of_pods_that_are_gone(
    manager: CniManager, pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    kept, stale = new_pod(pods, tmp_path), new_pod(pods, tmp_path)
    kept_result: CniResult = await manager.add(kept)
    await manager.add(stale)
    await manager.gc([kept])
    assert ip_files(test_network) == [kept_result.primary_ip]
    remaining = sorted(p.name for p in (test_network.cache_dir / "results").iterdir())
    assert remaining == [f"cni-loopback-{kept.container_id}-lo", f"pycri-{kept.container_id}-eth0"]


async def test_failed_add_leaves_nothing_behind(
    pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    conf_dir = tmp_path / "net.d"
    config = default_conflist(test_network.subnet, test_network.bridge, test_network.ipam_dir)
    config["plugins"].append({"type": "pycri-no-such-plugin"})
    conf_dir.mkdir()
    (conf_dir / DEFAULT_CONFLIST_FILE).write_text(json.dumps(config))
    manager = CniManager(conf_dir, DEFAULT_BIN_DIRS, test_network.cache_dir)
    pod = new_pod(pods, tmp_path)
    with pytest.raises(CniPluginNotFound, match="pycri-no-such-plugin"):
        await manager.add(pod)
    assert ip_files(test_network) == []
    assert await pod_addresses(pod.netns_path, "eth0") == []
    assert not list((test_network.cache_dir / "results").iterdir())


async def test_pod_cidr_replaces_the_default_subnet(
    pods: list[PodAttachment], tmp_path: Path, test_network: PrivateNetwork
) -> None:
    # A bridge of its own: the shared test bridge already carries the default subnet's gateway.
    bridge = f"pycrit{secrets.token_hex(3)}"
    conf_dir = tmp_path / "net.d"
    installed_default_config(conf_dir, test_network.subnet, bridge=bridge, ipam_data_dir=test_network.ipam_dir)
    manager = CniManager(conf_dir, DEFAULT_BIN_DIRS, test_network.cache_dir)
    pod_cidr = f"10.234.{secrets.randbelow(256)}.0/24"
    manager.pod_cidr = pod_cidr
    pod = new_pod(pods, tmp_path)
    try:
        result = await manager.add(pod)
        assert ip_address(result.primary_ip) in ip_network(pod_cidr)
        manager.pod_cidr = ""
        await manager.delete(pod)
        assert ip_files(test_network) == []
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)

"""Pod networking through CNI plugins: the API the sandbox service uses.

Each pod gets two attachments, as under containerd: the conf dir's network on
`eth0` (or the ifname asked for) and a built-in loopback network
(`cni-loopback`, plugin `loopback`) on `lo`. Both are ADDed concurrently and
each is recorded in the result cache, so DEL uses exactly what ADD used even
after a restart or a change of the conf dir.

Pod CIDR: kubelet's pod CIDR (UpdateRuntimeConfig, one CIDR or a dual-stack
comma-separated pair) replaces the host-local `ranges` of pycri's own network,
the one named "pycri" that `installed_default_config` writes, each time that
network is loaded; other networks (flannel, calico, ...) manage their own
addresses and are left alone. The rewritten config is what the result cache
keeps, so DEL releases from the ranges ADD used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pycri import telemetry
from pycri.network.cni_cache import CachedAttachment, ResultCache
from pycri.network.cni_config import (
    DEFAULT_CONF_DIR,
    LOOPBACK_NETWORK,
    NetworkConfig,
    config_files,
    load_default_network,
    with_pod_cidrs,
)
from pycri.network.cni_exec import (
    DEFAULT_BIN_DIRS,
    DEFAULT_PLUGIN_TIMEOUT,
    CniError,
    CniNetwork,
    PluginRunner,
    RuntimeConf,
)

log = logging.getLogger(__name__)

LOOPBACK_IFNAME = "lo"
DEFAULT_CACHE_DIR = Path("/var/lib/pycri/cni")


class CniNotReady(Exception):
    """The pod network cannot be used (no config, or a plugin missing or not ready)."""


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class BandwidthLimits:
    """Rates in bits per second, bursts in bits (the `bandwidth` capability)."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0


@dataclass(frozen=True)
class DnsSettings:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class IpRange:
    subnet: str
    range_start: str = ""
    range_end: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class PodAttachment:
    """One pod's attachment to the pod network, as the sandbox service describes it."""

    container_id: str
    netns_path: Path
    pod_name: str
    pod_namespace: str
    pod_uid: str
    ifname: str = "eth0"
    port_mappings: tuple[PortMapping, ...] = ()
    bandwidth: BandwidthLimits | None = None
    dns: DnsSettings | None = None
    ip_ranges: tuple[tuple[IpRange, ...], ...] = ()
    cgroup_path: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CniInterface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class CniResult:
    """The pod network's ADD result: the pod IPs (IPv4 first, then IPv6) and the interfaces made."""

    ips: tuple[str, ...]
    interfaces: tuple[CniInterface, ...]
    raw: Mapping[str, Any]

    @property
    def primary_ip(self) -> str:
        return self.ips[0] if self.ips else ""


def parse_result(raw: Mapping[str, Any], ifname: str, plugin: str = "result") -> CniResult:
    """Read pod IPs and interfaces from a result of any spec version (0.1.0 ... 1.1.0).

    IPs on the pod interface `ifname` are the pod IPs; when the result ties no IP to an
    interface, every IP counts.
    """
    try:
        interfaces = tuple(
            CniInterface(name=str(i["name"]), mac=str(i.get("mac", "")), sandbox=str(i.get("sandbox", "")))
            for i in raw.get("interfaces") or ()
        )
        if "ips" in raw:
            entries = raw["ips"] or []
            on_pod_interface = [
                entry["address"]
                for entry in entries
                if isinstance(entry.get("interface"), int)
                and 0 <= entry["interface"] < len(interfaces)
                and interfaces[entry["interface"]].name == ifname
                and interfaces[entry["interface"]].sandbox
            ]
            addresses = on_pod_interface or [entry["address"] for entry in entries]
        else:  # 0.1.0 / 0.2.0 results
            addresses = [raw[key]["ip"] for key in ("ip4", "ip6") if raw.get(key)]
        ips = [ipaddress.ip_interface(address).ip for address in addresses]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CniError(plugin, "ADD", f"unreadable result: {exc!r}") from exc
    ordered = sorted(ips, key=lambda ip: ip.version)
    return CniResult(ips=tuple(str(ip) for ip in ordered), interfaces=interfaces, raw=raw)


def parse_pod_cidrs(pod_cidr: str) -> tuple[str, ...]:
    """Kubelet sends one CIDR or a comma-separated dual-stack pair; ValueError when malformed."""
    return tuple(str(ipaddress.ip_network(part.strip())) for part in pod_cidr.split(",") if part.strip())


def capability_args(attachment: PodAttachment) -> dict[str, Any]:
    """The runtime's capability arguments for this pod; each plugin receives the ones it declares."""
    args: dict[str, Any] = {}
    ports = [
        {"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.lower()}
        | ({"hostIP": p.host_ip} if p.host_ip else {})
        for p in attachment.port_mappings
        if p.host_port > 0
    ]
    if ports:
        args["portMappings"] = ports
    if attachment.bandwidth is not None:
        b = attachment.bandwidth
        args["bandwidth"] = {
            "ingressRate": b.ingress_rate,
            "ingressBurst": b.ingress_burst,
            "egressRate": b.egress_rate,
            "egressBurst": b.egress_burst,
        }
    if attachment.ip_ranges:
        args["ipRanges"] = [
            [
                {"subnet": r.subnet}
                | {
                    key: value
                    for key, value in (("rangeStart", r.range_start), ("rangeEnd", r.range_end), ("gateway", r.gateway))
                    if value
                }
                for r in range_set
            ]
            for range_set in attachment.ip_ranges
        ]
    if attachment.dns is not None:
        d = attachment.dns
        args["dns"] = {"servers": list(d.servers), "searches": list(d.searches), "options": list(d.options)}
    if attachment.cgroup_path:
        args["cgroupPath"] = attachment.cgroup_path
    if attachment.annotations:
        args["io.kubernetes.cri.pod-annotations"] = dict(attachment.annotations)
    return args


def _netns_argument(path: Path | str) -> str:
    # The spec lets DEL run with an empty CNI_NETNS once the namespace is gone.
    return str(path) if path and os.path.exists(path) else ""


async def _run_together(*operations: Coroutine[Any, Any, Any]) -> list[Any]:
    """Await all; on the first failure cancel the rest and raise that failure itself (not a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(op) for op in operations]
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


class CniManager:
    """Pod network attachments: ADD, DEL, GC and readiness for the sandbox service."""

    def __init__(
        self,
        conf_dir: Path = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[Path] = DEFAULT_BIN_DIRS,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT,
    ) -> None:
        self.conf_dir = conf_dir
        self.runner = PluginRunner(bin_dirs, plugin_timeout)
        self.cache = ResultCache(cache_dir)
        self._pod_cidrs: tuple[str, ...] = ()
        self._loaded: tuple[tuple[tuple[str, int, int], ...], NetworkConfig | None] | None = None

    @property
    def pod_cidr(self) -> str:
        return ",".join(self._pod_cidrs)

    @pod_cidr.setter
    def pod_cidr(self, value: str) -> None:
        self._pod_cidrs = parse_pod_cidrs(value)
        log.info("pod CIDR set", extra={"fields": {"pod_cidr": self.pod_cidr}})

    def network(self) -> NetworkConfig | None:
        """The conf dir's network (the first valid file, re-read when the files change), pod CIDR applied."""
        signature = []
        for path in config_files(self.conf_dir):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            signature.append((path.name, stat.st_mtime_ns, stat.st_size))
        if self._loaded is None or self._loaded[0] != tuple(signature):
            self._loaded = (tuple(signature), load_default_network(self.conf_dir))
        network = self._loaded[1]
        return None if network is None else with_pod_cidrs(network, self._pod_cidrs)

    def _require_network(self) -> NetworkConfig:
        network = self.network()
        if network is None:
            raise CniNotReady(f"no valid CNI network config in {self.conf_dir}")
        return network

    def _runtime(self, attachment: PodAttachment, netns: str) -> RuntimeConf:
        runtime = RuntimeConf(
            container_id=attachment.container_id,
            netns=netns,
            ifname=attachment.ifname,
            cni_args=(
                ("IgnoreUnknown", "1"),
                ("K8S_POD_NAMESPACE", attachment.pod_namespace),
                ("K8S_POD_NAME", attachment.pod_name),
                ("K8S_POD_INFRA_CONTAINER_ID", attachment.container_id),
                ("K8S_POD_UID", attachment.pod_uid),
            ),
            capability_args=capability_args(attachment),
        )
        runtime.validate()
        return runtime

    async def status(self) -> None:
        """Return when pods can be networked; raise CniNotReady saying why not."""
        network = self._require_network()
        try:
            for candidate in (network, LOOPBACK_NETWORK):
                await CniNetwork(candidate, self.runner).status()
        except CniError as error:
            raise CniNotReady(str(error)) from error

    async def add(self, attachment: PodAttachment) -> CniResult:
        """Attach the pod (its network on `ifname`, loopback on `lo`); on failure nothing is left behind."""
        network = self._require_network()
        runtime = self._runtime(attachment, str(attachment.netns_path))
        loopback_runtime = replace(runtime, ifname=LOOPBACK_IFNAME)
        with telemetry.span("cni.add", {"pycri.sandbox_id": attachment.container_id, "pycri.network": network.name}):
            try:
                raw, loopback_raw = await _run_together(
                    CniNetwork(network, self.runner).add(runtime),
                    CniNetwork(LOOPBACK_NETWORK, self.runner).add(loopback_runtime),
                )
                result = parse_result(raw, attachment.ifname, network.name)
                await asyncio.to_thread(
                    self.cache.write,
                    CachedAttachment(network, runtime, raw),
                    CachedAttachment(LOOPBACK_NETWORK, loopback_runtime, loopback_raw),
                )
            except BaseException:
                await self._undo_add(network, runtime, loopback_runtime)
                raise
        log.info(
            "pod network attached",
            extra={"fields": {"container_id": attachment.container_id, "network": network.name, "ips": result.ips}},
        )
        return result

    async def _undo_add(self, network: NetworkConfig, runtime: RuntimeConf, loopback_runtime: RuntimeConf) -> None:
        for candidate, candidate_runtime in ((network, runtime), (LOOPBACK_NETWORK, loopback_runtime)):
            try:
                await CniNetwork(candidate, self.runner).delete(candidate_runtime, None)
            except (CniError, OSError) as error:
                log.error(
                    "CNI cleanup after a failed ADD failed",
                    extra={"fields": {"container_id": runtime.container_id, "error": str(error)}},
                )
            await asyncio.to_thread(self.cache.remove, candidate.name, runtime.container_id, candidate_runtime.ifname)

    async def _delete_cached(self, cached: CachedAttachment, netns: str) -> None:
        runtime = replace(cached.runtime, netns=netns)
        await CniNetwork(cached.network, self.runner).delete(runtime, cached.result)
        await asyncio.to_thread(self.cache.remove, cached.network.name, runtime.container_id, runtime.ifname)

    async def delete(self, attachment: PodAttachment) -> None:
        """Detach the pod; idempotent, and fine after a restart, a conf dir change or the netns' removal.

        Cached attachments are deleted with the config they were added with; without a cache entry
        the pod interface is deleted with the current config (e.g. after a crash during ADD).
        """
        netns = _netns_argument(attachment.netns_path)
        cached = await asyncio.to_thread(self.cache.attachments, attachment.container_id)
        operations = [self._delete_cached(entry, netns) for entry in cached]
        network = self.network()
        if network is not None and attachment.ifname not in {entry.runtime.ifname for entry in cached}:
            operations.append(CniNetwork(network, self.runner).delete(self._runtime(attachment, netns), None))
        # Every DEL runs to its end even when another fails: half a DEL helps nobody.
        with telemetry.span("cni.del", {"pycri.sandbox_id": attachment.container_id}):
            outcomes = await asyncio.gather(*operations, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        log.info("pod network detached", extra={"fields": {"container_id": attachment.container_id}})

    async def gc(self, valid_attachments: Iterable[PodAttachment]) -> None:
        """DEL every cached attachment of a pod not in `valid_attachments`, then GC (CNI 1.1) the network.

        Raises an ExceptionGroup of the failures after trying everything.
        """
        valid = {(a.container_id, ifname) for a in valid_attachments for ifname in (a.ifname, LOOPBACK_IFNAME)}
        failures: list[Exception] = []
        for entry in await asyncio.to_thread(self.cache.attachments):
            runtime = entry.runtime
            if (runtime.container_id, runtime.ifname) in valid or entry.network.disable_gc:
                continue
            try:
                await self._delete_cached(entry, _netns_argument(runtime.netns))
                log.info("stale pod attachment deleted", extra={"fields": {"container_id": runtime.container_id}})
            except (CniError, OSError) as error:
                failures.append(error)
        network = self.network()
        if network is not None:
            try:
                await CniNetwork(network, self.runner).gc(sorted(valid))
            except CniError as error:
                failures.append(error)
        if failures:
            raise ExceptionGroup("CNI garbage collection failed", failures)

"""Check a PodSandboxConfig and work out what running it takes, before anything is touched.

Everything that can be refused from the request alone is refused here, so a bad request
costs no namespace, mount or CNI call.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pycri.api import api_pb2
from pycri.config import Config
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.network.cni import BandwidthLimits, DnsSettings, PortMapping
from pycri.request_fields import MAX_UID_LENGTH, check_absolute_path, check_name
from pycri.sandbox.bandwidth import BadQuantity, bandwidth_from_annotations
from pycri.sandbox.files import has_dns_config
from pycri.sandbox.sysctls import Sysctl, parse_sysctls
from pycri.userns.mappings import user_namespace

MAX_HOSTNAME_LENGTH = 64  # HOST_NAME_MAX
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?")
_MODES = api_pb2.NamespaceMode


@dataclass(frozen=True)
class SandboxPlan:
    runtime_handler: str
    hostname: str  # what /etc/hostname says (and the UTS namespace, when the pod has its own)
    own_network: bool  # own net and UTS namespaces; otherwise the host's
    own_ipc: bool
    shared_pid: bool  # the containers share a PID namespace, whose PID 1 is a pause process
    sysctls: tuple[Sysctl, ...]
    port_mappings: tuple[PortMapping, ...]
    bandwidth: BandwidthLimits | None
    dns: DnsSettings | None
    log_directory: str


def _namespace_mode(options: api_pb2.NamespaceOption, kind: str) -> int:
    mode: int = getattr(options, kind)
    if mode == _MODES.TARGET:
        raise InvalidArgument(
            f"config.linux.security_context.namespace_options.{kind}: TARGET applies to containers, not pods"
        )
    if mode not in _MODES.values():
        raise InvalidArgument(f"config.linux.security_context.namespace_options.{kind}: unknown mode {mode}")
    return mode


def _check_user_namespace(options: api_pb2.NamespaceOption, *, network: int, ipc: int, pid: int) -> None:
    """The pod's own user namespace, if it asks for one (the record reads it from the config). It
    owns the pod's other namespaces, so the host's network, IPC or PID namespace cannot go with
    it (the runtime features report user_namespaces_host_network false)."""
    field = "config.linux.security_context.namespace_options"
    if user_namespace(options, field) is not None:
        for kind, mode in (("network", network), ("ipc", ipc), ("pid", pid)):
            if mode == _MODES.NODE:
                raise InvalidArgument(f"{field}.{kind}: NODE cannot go with a user namespace of the pod's own")


def _hostname(config: api_pb2.PodSandboxConfig) -> str:
    hostname = config.hostname
    if not hostname:
        return socket.gethostname()
    if len(hostname) > MAX_HOSTNAME_LENGTH or not _HOSTNAME.fullmatch(hostname):
        raise InvalidArgument(f"config.hostname {hostname!r} is not a valid host name (at most 64 characters)")
    return hostname


def port_mappings(config: api_pb2.PodSandboxConfig) -> tuple[PortMapping, ...]:
    """The pod's published host ports; InvalidArgument names a bad mapping."""
    mappings = []
    for index, mapping in enumerate(config.port_mappings):
        field = f"config.port_mappings[{index}]"
        if mapping.protocol not in api_pb2.Protocol.values():
            raise InvalidArgument(f"{field}.protocol: unknown protocol {mapping.protocol}")
        if not 0 <= mapping.host_port <= 65535:
            raise InvalidArgument(f"{field}.host_port: {mapping.host_port} is not a port number")
        if mapping.host_port == 0:
            continue  # informational only: nothing to publish
        if not 1 <= mapping.container_port <= 65535:
            raise InvalidArgument(f"{field}.container_port: {mapping.container_port} is not a port number")
        if mapping.host_ip:
            try:
                ipaddress.ip_address(mapping.host_ip)
            except ValueError:
                raise InvalidArgument(f"{field}.host_ip: {mapping.host_ip!r} is not an IP address") from None
        protocol = api_pb2.Protocol.Name(mapping.protocol).lower()
        mappings.append(PortMapping(mapping.host_port, mapping.container_port, protocol, mapping.host_ip))
    return tuple(mappings)


def _log_directory(config: api_pb2.PodSandboxConfig, settings: Config) -> str:
    if config.log_directory:
        check_absolute_path(config.log_directory, "config.log_directory")
        return config.log_directory
    metadata = config.metadata  # checked by plan_sandbox: each part is one path component
    return str(settings.runtime.default_log_dir / f"{metadata.namespace}_{metadata.name}_{metadata.uid}")


def plan_sandbox(config: api_pb2.PodSandboxConfig, runtime_handler: str, settings: Config) -> SandboxPlan:
    """What RunPodSandbox will do for this request; InvalidArgument names the field at fault."""
    if not config.HasField("metadata"):
        raise InvalidArgument("config.metadata is required")
    check_name(config.metadata.name, "config.metadata.name")
    check_name(config.metadata.namespace, "config.metadata.namespace")
    check_name(config.metadata.uid, "config.metadata.uid", MAX_UID_LENGTH)
    handler = runtime_handler or settings.runtime.default_handler
    if handler not in settings.runtime.handlers:
        known = ", ".join(sorted(settings.runtime.handlers))
        raise InvalidArgument(f"runtime handler {handler!r} is not configured (known: {known})")
    options = config.linux.security_context.namespace_options
    network = _namespace_mode(options, "network")
    ipc = _namespace_mode(options, "ipc")
    pid = _namespace_mode(options, "pid")
    _check_user_namespace(options, network=network, ipc=ipc, pid=pid)
    own_network = network != _MODES.NODE
    own_ipc = ipc != _MODES.NODE
    sysctls = parse_sysctls(config.linux.sysctls, host_network=not own_network, host_ipc=not own_ipc)
    try:
        bandwidth = bandwidth_from_annotations(config.annotations)
    except BadQuantity as exc:
        raise InvalidArgument(f"config.annotations: {exc}") from None
    dns = config.dns_config
    return SandboxPlan(
        runtime_handler=handler,
        hostname=_hostname(config),
        own_network=own_network,
        own_ipc=own_ipc,
        shared_pid=pid == _MODES.POD,
        sysctls=tuple(sysctls),
        port_mappings=port_mappings(config) if own_network else (),
        bandwidth=bandwidth if own_network else None,
        dns=DnsSettings(tuple(dns.servers), tuple(dns.searches), tuple(dns.options))
        if own_network and has_dns_config(dns)
        else None,
        log_directory=_log_directory(config, settings),
    )


def _overlaps(a: PortMapping, b: PortMapping) -> bool:
    if (a.host_port, a.protocol) != (b.host_port, b.protocol):
        return False
    wildcards = ("", "0.0.0.0", "::")
    return a.host_ip in wildcards or b.host_ip in wildcards or a.host_ip == b.host_ip


def check_host_ports(wanted: Iterable[PortMapping], taken: Iterable[tuple[str, PortMapping]]) -> None:
    """FailedPrecondition when a wanted host port is already published by another pod sandbox."""
    taken = list(taken)
    for mapping in wanted:
        for holder, other in taken:
            if _overlaps(mapping, other):
                where = f"{mapping.host_ip or '*'}:{mapping.host_port}/{mapping.protocol}"
                raise FailedPrecondition(f"host port {where} is already published by pod sandbox {holder}")

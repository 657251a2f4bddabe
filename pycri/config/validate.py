"""Checks across keys and of values' ranges, after the file was read into the dataclasses."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

from pycri.config.sections import (
    CGROUP_DRIVERS,
    CONMON_IN_POD,
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    ConfigError,
    ImageLimits,
    RuntimeSection,
    TimeoutsSection,
)


def validate(config: Config) -> None:
    def bad(key: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"config key {key!r}: {why}, got {value!r}")

    if config.log_level not in LOG_LEVELS:
        raise bad("log_level", config.log_level, f"expected one of {', '.join(LOG_LEVELS)}")
    if config.log_format not in LOG_FORMATS:
        raise bad("log_format", config.log_format, f"expected one of {', '.join(LOG_FORMATS)}")
    rt = config.runtime
    if rt.cgroup_driver not in CGROUP_DRIVERS:
        raise bad("runtime.cgroup_driver", rt.cgroup_driver, f"expected one of {', '.join(CGROUP_DRIVERS)}")
    if rt.default_handler not in rt.handlers:
        raise bad("runtime.default_handler", rt.default_handler, "names no entry of runtime.handlers")
    if not rt.cgroup_parent.startswith("/") and rt.cgroup_driver == "cgroupfs":
        raise bad("runtime.cgroup_parent", rt.cgroup_parent, "expected an absolute cgroup path")
    _validate_conmon_cgroup(rt)
    seconds = [
        ("runtime.abandoned_create_grace", rt.abandoned_create_grace),
        ("streaming.token_ttl", config.streaming.token_ttl),
    ]
    seconds += [(f"timeouts.{f.name}", getattr(config.timeouts, f.name)) for f in dataclasses.fields(TimeoutsSection)]
    seconds += [("nri.plugin_registration_timeout", config.nri.plugin_registration_timeout)]
    seconds += [("nri.plugin_request_timeout", config.nri.plugin_request_timeout)]
    for name in config.nri.required_plugins:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise bad("nri.required_plugins", name, "expected a plugin name of letters, digits and _.+-")
    for key, value in seconds:
        if not value > 0 or value == float("inf"):
            raise bad(key, value, "expected seconds > 0")
    if config.images.max_concurrent_downloads < 1:
        raise bad("images.max_concurrent_downloads", config.images.max_concurrent_downloads, "expected >= 1")
    if config.images.unpack_workers < 1:
        raise bad("images.unpack_workers", config.images.unpack_workers, "expected >= 1")
    for limit in dataclasses.fields(ImageLimits):
        if getattr(config.images.limits, limit.name) < 1:
            raise bad(f"images.limits.{limit.name}", getattr(config.images.limits, limit.name), "expected >= 1")
    if config.images.platform.count("/") not in (1, 2):
        raise bad("images.platform", config.images.platform, "expected os/arch or os/arch/variant")
    mirror_urls = {url for urls in config.images.mirrors.values() for url in urls}
    for url in config.images.mirror_credentials:
        if url not in mirror_urls:
            raise bad("images.mirror_credentials", url, "expected a URL listed in images.mirrors")
    if not 0 <= config.streaming.port <= 65535:
        raise bad("streaming.port", config.streaming.port, "expected 0..65535")
    try:
        ipaddress.ip_address(config.streaming.address)
    except ValueError:
        raise bad("streaming.address", config.streaming.address, "expected an IP address") from None
    try:
        ipaddress.ip_network(config.cni.default_subnet)
    except ValueError:
        raise bad("cni.default_subnet", config.cni.default_subnet, "expected a CIDR such as 10.85.0.0/16") from None
    _validate_telemetry(config)


def parse_host_port(text: str) -> tuple[str, int]:
    """Split "host:port" or "[IPv6]:port"; ValueError says what is wrong."""
    host, colon, port = text.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ValueError("expected host:port with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])
        return host[1:-1], int(port)
    if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError("expected host:port (an IPv6 address in brackets)")
    return host, int(port)


def _validate_telemetry(config: Config) -> None:
    if config.metrics.address:
        try:
            ipaddress.ip_address(parse_host_port(config.metrics.address)[0])
        except ValueError as error:
            raise ConfigError(
                f"config key 'metrics.address': expected an IP address and port such as 127.0.0.1:9090 ({error}),"
                f" got {config.metrics.address!r}"
            ) from None
    tracing = config.tracing
    if tracing.endpoint:
        scheme, separator, rest = tracing.endpoint.rpartition("://")
        try:
            if separator and scheme not in ("http", "https"):
                raise ValueError("the scheme must be http or https")
            parse_host_port(rest.rstrip("/"))
        except ValueError as error:
            raise ConfigError(
                f"config key 'tracing.endpoint': expected host:port or http(s)://host:port ({error}),"
                f" got {tracing.endpoint!r}"
            ) from None
    if not 0.0 <= tracing.sampling_ratio <= 1.0:
        raise ConfigError(f"config key 'tracing.sampling_ratio': expected 0.0..1.0, got {tracing.sampling_ratio!r}")
    if not tracing.service_name.strip():
        raise ConfigError(f"config key 'tracing.service_name': expected a name, got {tracing.service_name!r}")


def _validate_conmon_cgroup(rt: RuntimeSection) -> None:
    from pycri.cgroups.cgroupfs import cgroupfs_directory
    from pycri.cgroups.systemd import expand_slice

    if rt.conmon_cgroup == CONMON_IN_POD:
        return
    try:
        if rt.cgroup_driver == "systemd":
            expand_slice(rt.conmon_cgroup)
            return
        directory = cgroupfs_directory(rt.conmon_cgroup)
    except ValueError as error:
        raise ConfigError(
            f"config key 'runtime.conmon_cgroup': expected \"pod\" or a {rt.cgroup_driver} cgroup: {error}"
        ) from None
    try:
        parent = cgroupfs_directory(rt.cgroup_parent)
    except ValueError as error:
        raise ConfigError(f"config key 'runtime.cgroup_parent': {error}") from None
    if directory == parent or directory in parent.parents:
        # cgroup v2 takes no process in a cgroup whose children use controllers.
        raise ConfigError(
            f"config key 'runtime.conmon_cgroup': {rt.conmon_cgroup!r} holds runtime.cgroup_parent; give conmon a leaf"
        )

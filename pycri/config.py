"""pycri's configuration: a TOML file where every key has a default.

The file is optional (/etc/pycri/pycri.toml unless --config names another).
Unknown keys and values of the wrong type or range stop start-up with an
error naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/pycri/pycri.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")
CGROUP_DRIVERS = ("cgroupfs", "systemd")
CONMON_IN_POD = "pod"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the value."""


@dataclass
class HandlerConfig:
    """One OCI runtime that pods may ask for by RuntimeHandler name."""

    path: Path = Path("/usr/sbin/runc")
    # Runtime state dir; empty means <state_dir>/<handler name>.
    root: Path | None = None
    # Pod and container annotation keys (shell-style patterns, e.g. "run.oci.*") copied into the
    # OCI spec, where the runtime may act on them; none by default.
    allowed_annotations: list[str] = field(default_factory=list)


@dataclass
class RuntimeSection:
    default_handler: str = "runc"
    conmon: Path = Path("/usr/bin/conmon")
    cgroup_driver: str = "cgroupfs"
    cgroup_parent: str = "/pycri"
    pause_image: str = "registry.k8s.io/pause:3.10"
    # Pods without a log directory from kubelet log here.
    default_log_dir: Path = Path("/var/log/pycri/pods")
    log_size_max: int = -1
    handlers: dict[str, HandlerConfig] = field(
        default_factory=lambda: {"runc": HandlerConfig(path=Path("/usr/sbin/runc"))}
    )
    # "pod": each conmon in a leaf of its pod's cgroup; otherwise one cgroupfs path (cgroupfs
    # driver) or systemd slice (systemd driver) that holds every conmon.
    conmon_cgroup: str = CONMON_IN_POD
    # Seconds a RunPodSandbox or CreateContainer result whose caller gave up waits for kubelet's
    # retry before it is removed.
    abandoned_create_grace: float = 120.0


@dataclass
class CniSection:
    conf_dir: Path = Path("/etc/cni/net.d")
    bin_dirs: list[Path] = field(default_factory=lambda: [Path("/usr/lib/cni"), Path("/opt/cni/bin")])
    # Written into the default conflist pycri installs when conf_dir has none.
    default_subnet: str = "10.85.0.0/16"
    install_default_config: bool = True


@dataclass
class ImageLimits:
    """Caps on what one pulled or imported image may make pycri hold or write: layers come
    from outside, and a small gzip can inflate to any size."""

    # One PAX extended header (its records: path, linkpath, xattrs); Go's archive/tar allows 1 MiB too.
    pax_header_max_bytes: int = 1024 * 1024
    # A member's path or link target, and so a GNU long name or link record: Linux's PATH_MAX.
    path_max_bytes: int = 4096
    # Members of one layer tar; the largest distribution images hold a few hundred thousand.
    entries_per_layer_max: int = 1_000_000
    # File data one layer unpacks to, and all the layers of one image together.
    layer_unpacked_max_bytes: int = 64 * 1024**3
    image_unpacked_max_bytes: int = 128 * 1024**3
    # An image config blob, read whole into memory to be parsed (real ones take a few KiB).
    config_max_bytes: int = 8 * 1024 * 1024


@dataclass
class ImageSection:
    platform: str = "linux/amd64"
    max_concurrent_downloads: int = 3
    # A docker-style config.json whose "auths" supply registry credentials.
    docker_config: Path | None = None
    # Hosts reached over plain HTTP; localhost and 127.0.0.1 always are.
    insecure_registries: list[str] = field(default_factory=list)
    # Registry host -> endpoint URLs that serve it instead (no fallback to the host itself).
    mirrors: dict[str, list[str]] = field(default_factory=dict)
    # Mirror URLs, written as in `mirrors`, that are shown the credentials (CRI AuthConfig) of the
    # registry they serve; every other mirror gets only docker_config's credentials for its own host.
    mirror_credentials: list[str] = field(default_factory=list)
    # Hosts ("host" or "host:port") a layer's foreign URLs (manifest `urls`) may be fetched from;
    # empty: every layer comes from the registry itself.
    foreign_layer_hosts: list[str] = field(default_factory=list)
    pull_timeout: float = 600.0
    # Threads that unpack layers (each also uses a thread to decompress); pulls beyond wait.
    unpack_workers: int = 2
    limits: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class StreamingSection:
    """The HTTP server behind the Exec, Attach and PortForward URLs."""

    address: str = "127.0.0.1"
    # 0 picks a free port at start.
    port: int = 0
    # Seconds a URL from Exec, Attach or PortForward stays usable (once).
    token_ttl: float = 60.0
    # Seconds a session may pass with no byte either way before it is dropped (kubelet's
    # streaming-connection-idle-timeout default).
    idle_timeout: float = 4 * 3600.0
    # One WebSocket message, all fragments together; a larger one closes the connection (1009).
    websocket_max_message_bytes: int = 16 * 1024 * 1024
    # SPDY streams open at once on one connection; more are refused with REFUSED_STREAM.
    spdy_max_streams: int = 128
    # Client bytes one SPDY stream holds unread (and its largest data frame); when full, the
    # connection stops reading until the stream's reader catches up.
    spdy_stream_buffer_bytes: int = 256 * 1024
    # Both set: the server speaks HTTPS (the URLs say https://). PEM files.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.idle_timeout < float("inf"):
            raise ConfigError(f"config key 'streaming.idle_timeout': expected seconds > 0, got {self.idle_timeout!r}")
        sizes = [
            ("websocket_max_message_bytes", self.websocket_max_message_bytes, 1),
            ("spdy_max_streams", self.spdy_max_streams, 1),
            ("spdy_stream_buffer_bytes", self.spdy_stream_buffer_bytes, 64 * 1024),
        ]
        for name, value, least in sizes:
            if value < least:
                raise ConfigError(f"config key 'streaming.{name}': expected >= {least}, got {value!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("config keys 'streaming.tls_cert_file' and 'streaming.tls_key_file' go together")


@dataclass
class TimeoutsSection:
    """Seconds pycri waits for the programs it runs before it kills them and reports a timeout."""

    # One runc/crun call: state, start, kill, delete, update, features, exec setup.
    runtime: float = 60.0
    # From starting conmon to its report that `runc create` finished.
    conmon_create: float = 120.0
    # One CNI plugin execution (ADD, DEL, CHECK, STATUS, GC, VERSION).
    cni: float = 120.0
    # For conmon's exit file once the container's process is gone.
    stop_exit_wait: float = 10.0


@dataclass
class NriSection:
    """NRI (Node Resource Interface) plugins, hosted as containerd and CRI-O host them (on by default, as
    in containerd 2 and CRI-O)."""

    enable: bool = True
    # Where plugins that run on their own connect.
    socket_path: Path = Path("/var/run/nri/nri.sock")
    # Executables named <two-digit index>-<name> here are started with pycri, each on its own socket pair.
    plugin_path: Path = Path("/opt/nri/plugins")
    # <index>-<name>.conf or <name>.conf here is handed to that started plugin as its configuration.
    plugin_config_path: Path = Path("/etc/nri/conf.d")
    # Seconds a plugin has to register after it connects, and again to synchronize with the pods and containers.
    plugin_registration_timeout: float = 5.0
    # Seconds a plugin has to answer one event; a plugin that does not is dropped.
    plugin_request_timeout: float = 2.0
    # Plugin names (without the index) every container needs: CreateContainer fails while one is not connected.
    required_plugins: list[str] = field(default_factory=list)


@dataclass
class MetricsSection:
    """Prometheus metrics over HTTP (GET /metrics)."""

    # host:port the metrics are served on ("127.0.0.1:9090", "[::1]:9090"); empty: no metrics, no listener.
    address: str = ""


@dataclass
class TracingSection:
    """OpenTelemetry spans sent to a collector over OTLP gRPC."""

    # The collector: "host:port" or "http://host:port" (plaintext), "https://host:port" (TLS); empty: no tracing.
    endpoint: str = ""
    # Share of the traces that start in pycri that are kept; a caller's traceparent decides for its own.
    sampling_ratio: float = 1.0
    service_name: str = "pycri"


@dataclass
class CdiSection:
    """Container Device Interface specs (JSON or YAML) naming the devices containers may ask for."""

    # Read in this order: a device defined in a later dir replaces one of the same name in an earlier dir.
    spec_dirs: list[Path] = field(default_factory=lambda: [Path("/etc/cdi"), Path("/var/run/cdi")])


@dataclass
class Config:
    socket: Path = Path("/run/pycri/pycri.sock")
    root_dir: Path = Path("/var/lib/pycri")
    state_dir: Path = Path("/run/pycri")
    log_level: str = "info"
    # "logfmt" (key=value pairs) or "json" (one object per line, for log shippers).
    log_format: str = "logfmt"
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    cni: CniSection = field(default_factory=CniSection)
    images: ImageSection = field(default_factory=ImageSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    timeouts: TimeoutsSection = field(default_factory=TimeoutsSection)
    cdi: CdiSection = field(default_factory=CdiSection)
    nri: NriSection = field(default_factory=NriSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    tracing: TracingSection = field(default_factory=TracingSection)

    @property
    def db_path(self) -> Path:
        return self.root_dir / "pycri.db"

    def handler(self, name: str) -> HandlerConfig:
        return self.runtime.handlers[name]

    def handler_root(self, name: str) -> Path:
        configured = self.runtime.handlers[name].root
        return configured if configured is not None else self.state_dir / name


@dataclass(frozen=True)
class ConfigSource:
    """Where a config comes from: the file (None: the default path if it exists) and the command
    line's overrides, which win over the file at start and at every reload."""

    path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Config:
        return load_config(self.path, self.overrides)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (the default path when None, if it exists) and apply CLI overrides."""
    raw: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or source.exists():
        try:
            raw = tomllib.loads(source.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {source} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    config = _build(Config, raw, prefix="")
    _validate(config)
    return config


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (value {raw[unknown[0]]!r})")
    values = {name: _convert(hints[name], raw[name], prefix + name) for name in fields if name in raw}
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value in (None, ""):
            return None
        return _convert(options[0], value, key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a table, got {value!r}")
        return {k: _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Path:
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"config key {key!r}: expected an absolute path, got {value!r}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or isinstance(value, bool) and hint is not bool:
        raise ConfigError(f"config key {key!r}: expected {hint.__name__}, got {value!r}")
    return value


def _validate(config: Config) -> None:
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


def config_to_toml(config: Config) -> str:
    """Render the effective config as TOML (for `pycri config`)."""
    lines: list[str] = []
    _render_table(lines, dataclasses.asdict(config), [])
    return "\n".join(lines).strip() + "\n"


def _render_table(lines: list[str], table: dict[str, Any], path: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(toml_key(p) for p in path)}]")
    for key, value in scalars.items():
        if value is None:
            # Commented out, ready to edit: "" reads back as unset, so uncommenting it changes nothing.
            lines.append(f'# {toml_key(key)} = ""  (unset)')
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, value in tables.items():
        _render_table(lines, value, [*path, key])


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_value(value: Any) -> str:
    """One TOML value: a bool, number, list or string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(char: str) -> str:
    """A character as a TOML basic string holds it: quote, backslash and control characters escaped."""
    if char in '"\\':
        return "\\" + char
    if char < " " or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char

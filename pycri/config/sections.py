"""Every config key with its default, section by section (dataclasses read from TOML by load.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

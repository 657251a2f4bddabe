"""CNI network configuration: parsing, validation, choosing the default network.

The rules follow libcni: the network is the first valid file, by sorted file
name, among `*.conflist`, `*.conf` and `*.json` in the conf dir; a file that
holds a single plugin (a top-level `type`) is wrapped into a list of one.
Unlike containerd, a broken file does not stop the search: it is skipped and
the reason logged, so one bad file cannot take a node's pod network down.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CONFIG_SUFFIXES: tuple[str, ...] = (".conflist", ".conf", ".json")
DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_NETWORK_NAME = "pycri"
DEFAULT_CONFLIST_FILE = "10-pycri.conflist"
DEFAULT_SUBNET = "10.85.0.0/16"
DEFAULT_BRIDGE = "pycri0"

_VALID_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


class CniConfigError(ValueError):
    """A network configuration that pycri cannot use, with the reason."""


@dataclass(frozen=True)
class NetworkConfig:
    """One CNI network: a named, versioned chain of plugin configurations."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False
    source: Path | None = field(default=None, compare=False)

    def as_conflist(self) -> dict[str, Any]:
        """The network as a conflist document (what the result cache stores)."""
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "disableGC": self.disable_gc,
            "plugins": [dict(plugin) for plugin in self.plugins],
        }


# containerd attaches `lo` through a network of its own with this name; so does pycri.
LOOPBACK_NETWORK = NetworkConfig(name="cni-loopback", cni_version="1.0.0", plugins=({"type": "loopback"},))


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise CniConfigError(f"invalid CNI version {version!r}")
    major, minor, patch = (int(part) for part in parts)
    return major, minor, patch


def version_at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def _choose_version(document: dict[str, Any]) -> str:
    """The spec version to speak: `cniVersion`, or the highest supported entry of `cniVersions` (1.1)."""
    declared = document.get("cniVersion")
    if declared is not None and not isinstance(declared, str):
        raise CniConfigError(f"cniVersion must be a string, not {type(declared).__name__}")
    candidates = [declared] if declared else []
    listed = document.get("cniVersions")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise CniConfigError("cniVersions must be a list of strings")
        for version in listed:
            version_tuple(version)
        candidates += [v for v in listed if v in SUPPORTED_VERSIONS]
    if not candidates:
        raise CniConfigError("no cniVersion")
    chosen = max(candidates, key=version_tuple)
    if chosen not in SUPPORTED_VERSIONS:
        raise CniConfigError(f"unsupported cniVersion {chosen!r} (supported: {', '.join(SUPPORTED_VERSIONS)})")
    return chosen


def _read_flag(document: dict[str, Any], key: str) -> bool:
    value = document.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CniConfigError(f"{key} must be a boolean, not {value!r}")


def _validate_plugin(index: int, plugin: Any) -> dict[str, Any]:
    if not isinstance(plugin, dict):
        raise CniConfigError(f"plugin {index} is not a JSON object")
    plugin_type = plugin.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniConfigError(f"plugin {index} has no type")
    if os.sep in plugin_type or plugin_type in (".", ".."):
        raise CniConfigError(f"plugin {index} has an invalid type {plugin_type!r}")
    capabilities = plugin.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise CniConfigError(f"plugin {index} ({plugin_type}): capabilities must be an object")
    return plugin


def parse_network_config(data: bytes | str, source: Path | None = None) -> NetworkConfig:
    """Parse a conflist, or a single-plugin config (wrapped into a list of one); CniConfigError if invalid."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CniConfigError(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CniConfigError("not a JSON object")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise CniConfigError("no network name")
    if not _VALID_NAME.fullmatch(name):
        raise CniConfigError(f"invalid network name {name!r}")
    cni_version = _choose_version(document)
    if "plugins" in document:
        raw_plugins = document["plugins"]
        if not isinstance(raw_plugins, list):
            raise CniConfigError("plugins must be a list")
        if not raw_plugins:
            raise CniConfigError("no plugins in list")
    elif "type" in document:
        raw_plugins = [{k: v for k, v in document.items() if k not in ("name", "cniVersion", "cniVersions")}]
    else:
        raise CniConfigError("neither a plugins list nor a plugin type")
    plugins = tuple(_validate_plugin(index, plugin) for index, plugin in enumerate(raw_plugins))
    return NetworkConfig(
        name=name,
        cni_version=cni_version,
        plugins=plugins,
        disable_check=_read_flag(document, "disableCheck"),
        disable_gc=_read_flag(document, "disableGC"),
        source=source,
    )


def with_pod_cidrs(network: NetworkConfig, pod_cidrs: tuple[str, ...]) -> NetworkConfig:
    """pycri's own network (named "pycri") with its host-local ranges replaced by the node's pod CIDRs.

    Other networks, and pycri's when no pod CIDR is known, come back unchanged. (The `ipRanges`
    capability cannot do this job: host-local adds those ranges to its configured ones.)
    """
    if network.name != DEFAULT_NETWORK_NAME or not pod_cidrs:
        return network
    plugins = []
    for plugin in network.plugins:
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            ipam = {k: v for k, v in ipam.items() if k not in ("subnet", "rangeStart", "rangeEnd", "gateway")}
            ipam["ranges"] = [[{"subnet": cidr}] for cidr in pod_cidrs]
            routes = list(ipam.get("routes") or [])
            if any(":" in cidr for cidr in pod_cidrs) and not any(r.get("dst") == "::/0" for r in routes):
                routes.append({"dst": "::/0"})
            ipam["routes"] = routes
            plugin = {**plugin, "ipam": ipam}
        plugins.append(plugin)
    return replace(network, plugins=tuple(plugins))


def config_files(conf_dir: Path) -> list[Path]:
    """Candidate config files in `conf_dir`, in the order they are tried."""
    try:
        entries = sorted(conf_dir.iterdir(), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    return [entry for entry in entries if entry.suffix in CONFIG_SUFFIXES and entry.is_file()]


def load_default_network(conf_dir: Path) -> NetworkConfig | None:
    """The first valid network in `conf_dir`, or None when there is none."""
    for path in config_files(conf_dir):
        try:
            return parse_network_config(path.read_bytes(), source=path)
        except (CniConfigError, OSError) as exc:
            log.warning("skipping CNI config file", extra={"fields": {"path": str(path), "reason": str(exc)}})
    return None


def shipped_default_conflist() -> str:
    """The text of pycri/data/10-pycri.conflist, read from the installed package (wheel, zip or source tree)."""
    return resources.files("pycri").joinpath("data", DEFAULT_CONFLIST_FILE).read_text(encoding="utf-8")


def default_conflist(
    subnet: str = DEFAULT_SUBNET, bridge: str = DEFAULT_BRIDGE, ipam_data_dir: Path | None = None
) -> dict[str, Any]:
    """pycri's default network (pycri/data/10-pycri.conflist) with its subnet, bridge and IPAM data dir set."""
    document = json.loads(shipped_default_conflist())
    for plugin in document["plugins"]:
        if plugin["type"] == "bridge":
            plugin["bridge"] = bridge
            plugin["ipam"]["ranges"] = [[{"subnet": subnet}]]
            if ipam_data_dir is not None:
                plugin["ipam"]["dataDir"] = str(ipam_data_dir)
    return document


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def installed_default_config(
    conf_dir: Path = DEFAULT_CONF_DIR,
    subnet: str = DEFAULT_SUBNET,
    *,
    bridge: str = DEFAULT_BRIDGE,
    ipam_data_dir: Path | None = None,
) -> Path | None:
    """Write pycri's default network into `conf_dir` when it holds no config file at all.

    A directory with configs, even invalid ones, is the user's: nothing there is replaced.
    Returns the path written, or None when the directory already had configs.
    """
    if config_files(conf_dir):
        return None
    target = conf_dir / DEFAULT_CONFLIST_FILE
    content = json.dumps(default_conflist(subnet, bridge, ipam_data_dir), indent=2) + "\n"
    write_atomically(target, content.encode(), mode=0o644)
    log.info("installed default CNI config", extra={"fields": {"path": str(target), "subnet": subnet}})
    return target

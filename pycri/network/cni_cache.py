"""The CNI result cache: what each attachment was set up with, so DEL and GC work later.

One file per attachment, `<cache_dir>/results/<network>-<container id>-<ifname>`, in libcni's
`cniCacheV1` layout (the config bytes base64-encoded, as Go writes a []byte), so tools that read
libcni caches can read pycri's. Files are replaced atomically.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycri.network.cni_config import CniConfigError, NetworkConfig, parse_network_config, write_atomically
from pycri.network.cni_exec import RuntimeConf

log = logging.getLogger(__name__)

CACHE_KIND = "cniCacheV1"


@dataclass(frozen=True)
class CachedAttachment:
    """One attachment as it was ADDed: the network config used, the runtime arguments and the result."""

    network: NetworkConfig
    runtime: RuntimeConf
    result: dict[str, Any] = field(default_factory=dict)


class ResultCache:
    def __init__(self, cache_dir: Path) -> None:
        self.results_dir = cache_dir / "results"

    def path(self, network_name: str, container_id: str, ifname: str) -> Path:
        return self.results_dir / f"{network_name}-{container_id}-{ifname}"

    def write(self, *entries: CachedAttachment) -> None:
        for entry in entries:
            self._write_one(entry)

    def _write_one(self, entry: CachedAttachment) -> None:
        runtime = entry.runtime
        document = {
            "kind": CACHE_KIND,
            "containerId": runtime.container_id,
            "config": base64.b64encode(json.dumps(entry.network.as_conflist()).encode()).decode(),
            "ifName": runtime.ifname,
            "networkName": entry.network.name,
            "netns": runtime.netns,
            "cniArgs": [list(pair) for pair in runtime.cni_args],
            "capabilityArgs": dict(runtime.capability_args),
            "result": entry.result,
        }
        path = self.path(entry.network.name, runtime.container_id, runtime.ifname)
        self.results_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.results_dir.mkdir(exist_ok=True, mode=0o700)
        write_atomically(path, json.dumps(document).encode())

    def read(self, network_name: str, container_id: str, ifname: str) -> CachedAttachment | None:
        """The cached attachment, or None when there is none or it cannot be read (the reason is logged)."""
        return self._load(self.path(network_name, container_id, ifname))

    def remove(self, network_name: str, container_id: str, ifname: str) -> None:
        self.path(network_name, container_id, ifname).unlink(missing_ok=True)

    def attachments(self, container_id: str | None = None) -> list[CachedAttachment]:
        """All readable cached attachments, or those of one container, sorted by file name."""
        try:
            names = sorted(entry.name for entry in self.results_dir.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith(".") or (container_id is not None and f"-{container_id}-" not in name):
                continue
            entry = self._load(self.results_dir / name)
            if entry is not None and (container_id is None or entry.runtime.container_id == container_id):
                found.append(entry)
        return found

    def _load(self, path: Path) -> CachedAttachment | None:
        try:
            return parse_cache_document(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable CNI cache file", extra={"fields": {"path": str(path), "reason": str(exc)}})
            return None


def parse_cache_document(data: bytes) -> CachedAttachment:
    """Parse one cache file; ValueError (CniConfigError included) when it is not a usable cniCacheV1 entry."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("kind") != CACHE_KIND:
        raise ValueError(f"not a {CACHE_KIND} entry")
    try:
        config_bytes = base64.b64decode(document["config"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"bad config field: {exc}") from exc
    network = parse_network_config(config_bytes)
    if network.name != document.get("networkName"):
        raise CniConfigError("cached config does not match networkName")
    result = document.get("result") or {}
    capability_args = document.get("capabilityArgs") or {}
    raw_args = document.get("cniArgs") or []
    if not isinstance(result, dict) or not isinstance(capability_args, dict) or not isinstance(raw_args, list):
        raise ValueError("bad result, capabilityArgs or cniArgs field")
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in raw_args):
        raise ValueError("cniArgs must be [key, value] pairs")
    runtime = RuntimeConf(
        container_id=str(document.get("containerId", "")),
        netns=str(document.get("netns", "")),
        ifname=str(document.get("ifName", "")),
        cni_args=tuple((str(key), str(value)) for key, value in raw_args),
        capability_args=capability_args,
    )
    return CachedAttachment(network=network, runtime=runtime, result=result)

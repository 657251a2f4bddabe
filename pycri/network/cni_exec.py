"""Running CNI plugin binaries per the CNI spec: lookup, environment, stdin, result and errors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycri.network.cni_config import NetworkConfig, version_at_least
from pycri.process_exit import kill_session

log = logging.getLogger(__name__)

DEFAULT_BIN_DIRS: tuple[Path, ...] = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
# Seconds one plugin execution may take (config [timeouts] cni).
DEFAULT_PLUGIN_TIMEOUT = 120.0
# The newest spec version pycri speaks, sent with VERSION as libcni does.
LATEST_VERSION = "1.1.0"

_VALID_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_MAX_IFNAME_LENGTH = 15


class CniError(Exception):
    """A CNI operation failed; `plugin` and `command` say where, `code` is the spec's error code."""

    def __init__(self, plugin: str, command: str, msg: str, code: int | None = None, details: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.msg = msg
        self.code = code
        self.details = details
        text = f"CNI plugin {plugin} failed ({command}): {msg}"
        if details:
            text += f": {details}"
        if code is not None:
            text += f" (code {code})"
        super().__init__(text)


class CniTimeout(CniError):
    """A plugin did not finish within the plugin timeout; it was killed with what it started."""

    def __init__(self, plugin: str, command: str, seconds: float) -> None:
        super().__init__(plugin, command, f"no answer within {seconds}s; the plugin was killed")
        self.seconds = seconds


class CniPluginNotFound(CniError):
    def __init__(self, plugin: str, command: str, bin_dirs: Sequence[Path]) -> None:
        searched = ", ".join(str(d) for d in bin_dirs)
        super().__init__(plugin, command, f"plugin binary {plugin!r} not found in {searched}")


@dataclass(frozen=True)
class RuntimeConf:
    """What one attachment passes to every plugin besides the network config (libcni's RuntimeConf)."""

    container_id: str
    netns: str
    ifname: str
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not _VALID_ID.fullmatch(self.container_id):
            raise ValueError(f"invalid container ID {self.container_id!r}")
        name = self.ifname
        if not name or len(name) > _MAX_IFNAME_LENGTH or name in (".", "..") or re.search(r"[/:\s]", name):
            raise ValueError(f"invalid interface name {name!r}")
        for key, value in self.cni_args:
            if re.search(r"[;=]", key) or ";" in value:
                raise ValueError(f"CNI_ARGS entry {key}={value} may not contain ';' (or '=' in the key)")


def plugin_stdin(
    network_name: str,
    cni_version: str,
    plugin: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None = None,
    capability_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config one plugin reads on stdin: its own config plus the list's name and version, the
    previous plugin's result, and only the runtime capabilities this plugin declares."""
    conf = dict(plugin)
    conf["name"] = network_name
    conf["cniVersion"] = cni_version
    if prev_result is not None:
        conf["prevResult"] = {**prev_result, "cniVersion": cni_version}
    declared = plugin.get("capabilities") or {}
    runtime_config = {name: value for name, value in (capability_args or {}).items() if declared.get(name) is True}
    if runtime_config:
        conf["runtimeConfig"] = runtime_config
    return conf


def plugin_env(command: str, bin_dirs: Sequence[Path], runtime: RuntimeConf | None) -> dict[str, str]:
    """The plugin's environment: pycri's own minus any CNI_* variables, plus the spec's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CNI_")}
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = os.pathsep.join(str(d) for d in bin_dirs)
    if runtime is not None:
        env["CNI_CONTAINERID"] = runtime.container_id
        env["CNI_NETNS"] = runtime.netns
        env["CNI_IFNAME"] = runtime.ifname
        env["CNI_ARGS"] = ";".join(f"{key}={value}" for key, value in runtime.cni_args)
    return env


def error_from_output(plugin: str, command: str, stdout: bytes, stderr: bytes, returncode: int) -> CniError:
    """Turn a failed plugin's output (the spec's error JSON, or any text) into a CniError."""
    try:
        document = json.loads(stdout)
    except ValueError:
        document = None
    if isinstance(document, dict) and ("msg" in document or "code" in document):
        code = document.get("code")
        return CniError(
            plugin,
            command,
            str(document.get("msg", "")),
            code=code if isinstance(code, int) else None,
            details=str(document.get("details", "")),
        )
    text = (stderr or stdout).decode(errors="replace").strip() or f"exit status {returncode}"
    return CniError(plugin, command, text)


class PluginRunner:
    """Finds plugin binaries in the bin dirs and executes them, each execution bounded by `timeout`
    seconds: a plugin that outlasts it is killed with what it started in its session."""

    def __init__(self, bin_dirs: Sequence[Path] = DEFAULT_BIN_DIRS, timeout: float = DEFAULT_PLUGIN_TIMEOUT) -> None:
        self.bin_dirs = tuple(bin_dirs)
        self.timeout = timeout
        self._versions: dict[Path, tuple[int, frozenset[str]]] = {}

    def find(self, plugin_type: str, command: str = "lookup") -> Path:
        for directory in self.bin_dirs:
            candidate = directory / plugin_type
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise CniPluginNotFound(plugin_type, command, self.bin_dirs)

    async def run(
        self, plugin_type: str, command: str, conf: Mapping[str, Any], runtime: RuntimeConf | None = None
    ) -> dict[str, Any] | None:
        """Execute `command`; returns the parsed JSON output (ADD, VERSION) or None when there is none."""
        binary = self.find(plugin_type, command)
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=plugin_env(command, self.bin_dirs, runtime),
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), self.timeout)
        except TimeoutError:
            await asyncio.shield(kill_session(proc))
            fields = {"plugin": plugin_type, "command": command, "seconds": self.timeout}
            log.warning("CNI plugin timed out", extra={"fields": fields})
            raise CniTimeout(plugin_type, command, self.timeout) from None
        except BaseException:
            await asyncio.shield(kill_session(proc))
            raise
        if proc.returncode != 0:
            raise error_from_output(plugin_type, command, stdout, stderr, proc.returncode or 0)
        if stderr:
            fields = {"plugin": plugin_type, "command": command, "stderr": stderr.decode(errors="replace")}
            log.debug("CNI plugin stderr", extra={"fields": fields})
        if not stdout.strip():
            return None
        try:
            result = json.loads(stdout)
        except ValueError as exc:
            raise CniError(plugin_type, command, f"unparseable output: {exc}") from exc
        if not isinstance(result, dict):
            raise CniError(plugin_type, command, "output is not a JSON object")
        return result

    async def supported_versions(self, plugin_type: str) -> frozenset[str]:
        """The spec versions a plugin binary reports (VERSION), remembered until the binary changes."""
        binary = self.find(plugin_type, "VERSION")
        stamp = binary.stat().st_mtime_ns
        known = self._versions.get(binary)
        if known is not None and known[0] == stamp:
            return known[1]
        output = await self.run(plugin_type, "VERSION", {"cniVersion": LATEST_VERSION})
        listed = (output or {}).get("supportedVersions")
        if not isinstance(listed, list):
            raise CniError(plugin_type, "VERSION", "no supportedVersions in output")
        versions = frozenset(str(version) for version in listed)
        self._versions[binary] = (stamp, versions)
        return versions


def tolerable_on_delete(error: CniError) -> bool:
    """DEL errors that mean "already gone": the spec's code 3, or a plugin saying so in words."""
    if isinstance(error, CniPluginNotFound):
        return False
    if error.code == 3:
        return True
    return bool(re.search(r"not found|no such|does not exist|doesn't exist", f"{error.msg} {error.details}", re.I))


class CniNetwork:
    """One network's plugin chain run through a PluginRunner: libcni's *NetworkList operations.

    A 1.1.0 network meets plugins that may speak only 1.0.0 (Debian ships such plugins): as the
    two versions share one result format, each such plugin is driven at 1.0.0, and the 1.1-only
    commands (STATUS, GC) are sent only to plugins that list 1.1.0.
    """

    def __init__(self, config: NetworkConfig, runner: PluginRunner) -> None:
        self.config = config
        self.runner = runner

    @property
    def name(self) -> str:
        return self.config.name

    async def _version_for(self, plugin_type: str) -> str:
        wanted = self.config.cni_version
        if wanted != "1.1.0":
            return wanted
        supported = await self.runner.supported_versions(plugin_type)
        if wanted not in supported and "1.0.0" in supported:
            return "1.0.0"
        return wanted

    async def _invoke(
        self,
        plugin: Mapping[str, Any],
        command: str,
        runtime: RuntimeConf,
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        version = await self._version_for(plugin["type"])
        conf = plugin_stdin(self.name, version, plugin, prev_result, runtime.capability_args)
        return await self.runner.run(plugin["type"], command, conf, runtime)

    async def add(self, runtime: RuntimeConf) -> dict[str, Any]:
        """ADD through the chain in order, each plugin seeing the previous one's result."""
        result: dict[str, Any] | None = None
        for plugin in self.config.plugins:
            result = await self._invoke(plugin, "ADD", runtime, result)
            if result is None:
                raise CniError(plugin["type"], "ADD", "plugin returned no result")
        assert result is not None  # the config parser guarantees at least one plugin
        return result

    async def delete(self, runtime: RuntimeConf, cached_result: Mapping[str, Any] | None) -> None:
        """DEL through the chain in reverse; errors meaning "already gone" are logged and passed over.

        Unlike libcni, a failing plugin does not stop the chain: the plugins before it still
        release what they hold (an IP, say), and the first real error is raised at the end.
        """
        prev_result = cached_result if version_at_least(self.config.cni_version, "0.4.0") else None
        first_error: CniError | None = None
        for plugin in reversed(self.config.plugins):
            try:
                await self._invoke(plugin, "DEL", runtime, prev_result)
            except CniError as error:
                fields = {"network": self.name, "container_id": runtime.container_id, "error": str(error)}
                if tolerable_on_delete(error):
                    log.warning("CNI DEL found nothing to delete", extra={"fields": fields})
                else:
                    log.error("CNI DEL failed", extra={"fields": fields})
                    first_error = first_error or error
        if first_error is not None:
            raise first_error

    async def _plugins_speaking_1_1(self) -> list[Mapping[str, Any]]:
        if not version_at_least(self.config.cni_version, "1.1.0"):
            return []
        return [p for p in self.config.plugins if await self._version_for(p["type"]) == "1.1.0"]

    async def status(self) -> None:
        """Raise unless every plugin binary exists and speaks the config's version; then STATUS (1.1)."""
        for plugin in self.config.plugins:
            version = await self._version_for(plugin["type"])
            if version not in await self.runner.supported_versions(plugin["type"]):
                raise CniError(plugin["type"], "VERSION", f"plugin does not support config version {version}", code=1)
        for speaking_1_1 in await self._plugins_speaking_1_1():
            conf = plugin_stdin(self.name, "1.1.0", speaking_1_1)
            await self.runner.run(speaking_1_1["type"], "STATUS", conf)

    async def gc(self, valid_attachments: Sequence[tuple[str, str]]) -> None:
        """Send GC (1.1) with the still-valid (container ID, ifname) pairs; nothing for older versions."""
        if self.config.disable_gc:
            return
        valid = [{"containerID": container_id, "ifname": ifname} for container_id, ifname in valid_attachments]
        for plugin in await self._plugins_speaking_1_1():
            conf = plugin_stdin(self.name, "1.1.0", plugin)
            conf["cni.dev/valid-attachments"] = valid
            # The 1.1.0 spec text first named the key this way; libcni sends both.
            conf["cni.dev/attachments"] = valid
            await self.runner.run(plugin["type"], "GC", conf)

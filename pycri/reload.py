"""Config reload on SIGHUP: read the file again, apply what can change while pycri runs, say the rest.

Applied at once (for what starts after the reload; a pull or create already under way goes on
with what it had):

- log_level, log_format
- images.mirrors, insecure_registries, docker_config, mirror_credentials, foreign_layer_hosts,
  pull_timeout and images.limits
- runtime.default_handler, new entries of runtime.handlers, and allowed_annotations of every handler
- cdi.spec_dirs (CreateContainer reads the spec files each time)

Every other changed key (dirs, the socket, cgroup settings, a handler's path or root, a handler
removed, CNI, streaming, timeouts, NRI, metrics, tracing) is logged as needing a restart and keeps its
running value.
A config that does not load (bad TOML, unknown key, bad value) is refused with its error and the
running config stays whole.

The reload never changes a Config in place: it builds the config to run with (the new values of the
live keys over the running config) and the daemon hands that object to its components.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from pycri.config import DEFAULT_CONFIG_PATH, Config, ConfigError, ConfigSource, toml_key
from pycri.daemon import Daemon
from pycri.log import setup_logging
from pycri.sdnotify import ServiceManager

log = logging.getLogger(__name__)

_ABSENT = object()  # a key one of two configs does not have (a runtime handler only one names)


@dataclass(frozen=True)
class Change:
    key: str  # as the config file writes it: runtime.handlers.crun.path
    running: Any  # _ABSENT where the running config has no such key (a handler added)
    configured: Any  # _ABSENT where the file no longer has it (a handler removed)
    live: bool  # applied now; else it waits for a restart


@dataclass(frozen=True)
class ReloadPlan:
    applied: Config  # what the daemon runs with after the reload
    changes: list[Change]

    @property
    def live(self) -> list[str]:
        return [change.key for change in self.changes if change.live]

    @property
    def restart(self) -> list[str]:
        return [change.key for change in self.changes if not change.live]


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """Which of the changes from `running` to `loaded` apply now, and the config that results."""
    applied = _with_live_keys(running, loaded)
    changes = [
        Change(
            key_name(key),
            value_at(running, key),
            value_at(loaded, key),
            live=value_at(applied, key) == value_at(loaded, key),
        )
        for key in changed_keys(running, loaded)
    ]
    return ReloadPlan(applied, changes)


def _with_live_keys(running: Config, loaded: Config) -> Config:
    new_handlers = loaded.runtime.handlers
    handlers = {
        name: dataclasses.replace(handler, allowed_annotations=list(new_handlers[name].allowed_annotations))
        if name in new_handlers
        else handler
        for name, handler in running.runtime.handlers.items()
    }
    handlers.update({name: handler for name, handler in new_handlers.items() if name not in handlers})
    images = loaded.images
    return dataclasses.replace(
        running,
        log_level=loaded.log_level,
        log_format=loaded.log_format,
        cdi=loaded.cdi,
        runtime=dataclasses.replace(running.runtime, default_handler=loaded.runtime.default_handler, handlers=handlers),
        images=dataclasses.replace(
            running.images,
            mirrors=images.mirrors,
            insecure_registries=images.insecure_registries,
            docker_config=images.docker_config,
            mirror_credentials=images.mirror_credentials,
            foreign_layer_hosts=images.foreign_layer_hosts,
            pull_timeout=images.pull_timeout,
            limits=images.limits,
        ),
    )


def changed_keys(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the keys whose values differ. Sections are walked key by key, and so are tables of
    sections (runtime.handlers); a table of plain values (images.mirrors) is one key."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        return [
            key
            for f in dataclasses.fields(old)
            for key in changed_keys(getattr(old, f.name), getattr(new, f.name), (*path, f.name))
        ]
    if isinstance(old, dict) and isinstance(new, dict) and _holds_sections(old, new):
        names = dict.fromkeys([*old, *new])
        return [
            key
            for name in names
            for key in (
                changed_keys(old[name], new[name], (*path, name)) if name in old and name in new else [(*path, name)]
            )
        ]
    return [] if old == new else [path]


def _holds_sections(*tables: dict[str, Any]) -> bool:
    return any(dataclasses.is_dataclass(value) for table in tables for value in table.values())


def value_at(config: Config, key: tuple[str, ...]) -> Any:
    value: Any = config
    for part in key:
        if isinstance(value, dict):
            value = value.get(part, _ABSENT)
        elif dataclasses.is_dataclass(value):
            value = getattr(value, part)
        if value is _ABSENT:
            return _ABSENT
    return value


def key_name(key: tuple[str, ...]) -> str:
    """A key path as the config file writes it: runtime.handlers."kata.v2".path."""
    return ".".join(toml_key(part) for part in key)


def _shown(value: Any) -> Any:
    if value is _ABSENT:
        return "(none)"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


async def reload_config(daemon: Daemon, source: ConfigSource) -> ReloadPlan | None:
    """Reload the config from `source` into `daemon`; None when it was refused (logged) and nothing changed."""
    try:
        loaded = await asyncio.to_thread(source.load)
    except ConfigError as error:
        log.error("config reload refused, the running config stays", extra={"fields": {"error": str(error)}})
        return None
    plan = plan_reload(daemon.config, loaded)
    if not plan.changes:
        log.info("config reloaded: nothing changed")
        return plan
    try:
        await daemon.reconfigure(plan.applied)
    except Exception as error:  # noqa: BLE001 - a reload that fails must not take the daemon down
        log.exception("config reload failed, the running config stays", extra={"fields": {"error": str(error)}})
        return None
    setup_logging(plan.applied.log_level, plan.applied.log_format)
    log.log(
        logging.WARNING if plan.restart else logging.INFO,
        "config reloaded",
        extra={"fields": {"applied": ", ".join(plan.live) or "-", "needs_restart": ", ".join(plan.restart) or "-"}},
    )
    for change in plan.changes:
        fields = {"key": change.key, "old": _shown(change.running), "new": _shown(change.configured)}
        if change.live:
            log.info("config key applied", extra={"fields": fields})
        else:
            log.warning("config key changed, needs a restart", extra={"fields": fields})
    return plan


class Reloader:
    """Runs reloads one at a time as SIGHUPs come; tells the service manager RELOADING=1, then READY=1."""

    def __init__(self, daemon: Daemon, source: ConfigSource, manager: ServiceManager, status: str) -> None:
        self._daemon = daemon
        self._source = source
        self._manager = manager
        self._status = status
        self._turn = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        """The SIGHUP handler: schedule a reload after the ones already asked for."""
        task = asyncio.get_running_loop().create_task(self._reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        async with self._turn:
            path = self._source.path or DEFAULT_CONFIG_PATH
            log.info("SIGHUP: reloading the config", extra={"fields": {"path": str(path)}})
            self._manager.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                await reload_config(self._daemon, self._source)
            finally:
                self._manager.ready(self._status)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

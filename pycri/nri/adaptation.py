"""The plugin registry: plugins started from the plugin dir and those that connect to the
socket, each registered, configured and synchronized before it sees any event, then
called for every event it subscribed to, one event at a time, in plugin index order.

A plugin that does not answer in time, breaks the protocol or goes away is dropped and
the operation goes on without it; an error it answers with fails the operation (where
the operation can fail: RunPodSandbox, CreateContainer, StartContainer, an update).
Synchronization waits for pod and container creations in flight, and creations wait for
it, so every container reaches a new plugin either in its Synchronize call or as a
CreateContainer event, never neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message

from pycri.config import NriSection
from pycri.nri import ttrpc
from pycri.nri.connection import ConnectionClosed
from pycri.nri.pb import api_pb2 as nri
from pycri.nri.plugin import Plugin, RegistrationFailed, UpdateContainers, check_index, check_name
from pycri.unix_socket import SocketInUse, claim_socket_path, file_creation_mask

log = logging.getLogger(__name__)

Reply = TypeVar("Reply", bound=Message)
# Events whose own method a plugin may leave unimplemented: they then go to StateChange.
_STATE_CHANGE_EVENTS = frozenset(
    {
        nri.RUN_POD_SANDBOX,
        nri.STOP_POD_SANDBOX,
        nri.REMOVE_POD_SANDBOX,
        nri.POST_CREATE_CONTAINER,
        nri.START_CONTAINER,
        nri.POST_START_CONTAINER,
        nri.POST_UPDATE_CONTAINER,
        nri.REMOVE_CONTAINER,
        nri.POST_UPDATE_POD_SANDBOX,
    }
)


def _state_change(event: int, request: Message) -> nri.StateChangeEvent:
    """The event as NRI's older catch-all call carries it: the pod and container of the request."""
    change = nri.StateChangeEvent()
    change.event = event  # type: ignore[assignment]
    for field, value in request.ListFields():
        if field.name in ("pod", "container"):
            getattr(change, field.name).CopyFrom(value)
    return change


class PluginFailed(Exception):
    """A plugin answered an event with an error."""

    def __init__(self, plugin: str, method: str, message: str) -> None:
        super().__init__(f"NRI plugin {plugin} failed {method}: {message}")
        self.plugin = plugin


@dataclass(frozen=True)
class RuntimeSide:
    """What the registry needs from pycri."""

    name: str
    version: str
    # Every pod and container, for a plugin's Synchronize call.
    snapshot: Callable[[], Awaitable[tuple[list[nri.PodSandbox], list[nri.Container]]]]
    update_containers: UpdateContainers


class SyncGate:
    """Many operations at once, or one synchronization; a waiting synchronization goes first."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._operations = 0
        self._syncing = False
        self._syncs_waiting = 0

    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(lambda: not self._syncing and not self._syncs_waiting)
            self._operations += 1
        try:
            yield
        finally:
            async with self._condition:
                self._operations -= 1
                self._condition.notify_all()

    @contextlib.asynccontextmanager
    async def synchronization(self) -> AsyncIterator[None]:
        async with self._condition:
            self._syncs_waiting += 1
            try:
                await self._condition.wait_for(lambda: not self._syncing and not self._operations)
            finally:
                self._syncs_waiting -= 1
            self._syncing = True
        try:
            yield
        finally:
            async with self._condition:
                self._syncing = False
                self._condition.notify_all()


class Adaptation:
    def __init__(self, settings: NriSection, runtime: RuntimeSide) -> None:
        self.settings = settings
        self.runtime = runtime
        self.gate = SyncGate()
        self._plugins: list[Plugin] = []
        self._events = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._joining: set[asyncio.Task[None]] = set()

    @property
    def plugins(self) -> list[Plugin]:
        return list(self._plugins)

    def connected(self) -> bool:
        return bool(self._plugins)

    def missing_required(self) -> list[str]:
        present = {plugin.base for plugin in self._plugins}
        return [name for name in self.settings.required_plugins if name not in present]

    async def start(self) -> None:
        for path, index, base in self._discover():
            with contextlib.suppress(OSError, RegistrationFailed):  # logged in _launch
                await self._launch(path, index, base)
        await self._listen()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                self.settings.socket_path.unlink()
        for task in list(self._joining):
            task.cancel()
        plugins, self._plugins = self._plugins, []
        await asyncio.gather(*(plugin.close() for plugin in plugins))

    # ---- events ----

    async def dispatch(
        self,
        event: int,
        method: str,
        request: Message | Callable[[], Message],
        reply: type[Reply],
        on_reply: Callable[[Plugin, Reply], None] | None = None,
    ) -> list[tuple[Plugin, Reply]]:
        """Call each subscribed plugin in turn. request may be a function, to make it anew for each
        plugin; on_reply takes each reply before the next plugin is called (its error ends the event)."""
        replies: list[tuple[Plugin, Reply]] = []
        async with self._events:
            for plugin in list(self._plugins):
                if plugin.connection.closed.is_set():
                    await self._drop(plugin, "connection closed")
                    continue
                if not plugin.subscribed(event):
                    continue
                made = request() if callable(request) else request
                answer = await self._call(plugin, event, method, made, reply)
                if answer is not None:
                    if on_reply is not None:
                        on_reply(plugin, answer)
                    replies.append((plugin, answer))
        return replies

    async def _call(
        self, plugin: Plugin, event: int, method: str, request: Message, reply: type[Reply]
    ) -> Reply | None:
        timeout = self.settings.plugin_request_timeout
        try:
            try:
                return await plugin.call(method, request, reply, timeout)
            except ttrpc.CallFailed as failed:
                if failed.code != ttrpc.Code.UNIMPLEMENTED or event not in _STATE_CHANGE_EVENTS:
                    raise
            await plugin.call("StateChange", _state_change(event, request), nri.Empty, timeout)
            return reply()
        except ttrpc.CallFailed as failed:
            raise PluginFailed(plugin.name, method, failed.message) from None
        except (TimeoutError, ConnectionClosed, ttrpc.TtrpcError) as exc:
            await self._drop(plugin, f"{method}: {exc or 'timed out'}")
            return None

    async def _drop(self, plugin: Plugin, why: str) -> None:
        if plugin in self._plugins:
            self._plugins.remove(plugin)
            gone = plugin.connection.closed.is_set() and why == "connection closed"  # it left: no fault
            log.log(
                logging.INFO if gone else logging.WARNING,
                "NRI plugin dropped",
                extra={"fields": {"plugin": plugin.name, "reason": why}},
            )
        await plugin.close()

    # ---- joining: plugin dir, socket ----

    def _discover(self) -> list[tuple[Path, str, str]]:
        try:
            entries = sorted(self.settings.plugin_path.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for path in entries:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o111:
                continue
            index, _, base = path.name.partition("-")
            try:
                check_index(index)
                check_name(base)
            except RegistrationFailed as exc:
                log.warning("NRI plugin file skipped", extra={"fields": {"path": str(path), "reason": str(exc)}})
                continue
            found.append((path, index, base))
        return found

    def _plugin_config(self, index: str, base: str) -> str:
        for name in (f"{index}-{base}.conf", f"{base}.conf"):
            with contextlib.suppress(FileNotFoundError):
                return (self.settings.plugin_config_path / name).read_text()
        return ""

    async def _launch(self, path: Path, index: str, base: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = {"NRI_PLUGIN_NAME": base, "NRI_PLUGIN_IDX": index, "NRI_PLUGIN_SOCKET": str(theirs.fileno())}
            process = await asyncio.create_subprocess_exec(
                str(path),
                env={**env, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            log.warning("NRI plugin did not start", extra={"fields": {"path": str(path), "error": str(exc)}})
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        plugin = Plugin(
            reader, writer, self.runtime.update_containers,
            index=index, base=base, config=self._plugin_config(index, base), process=process,
        )  # fmt: skip
        await self._join(plugin)

    async def _listen(self) -> None:
        path = self.settings.socket_path
        try:
            claim_socket_path(path, dir_mode=0o700)
        except SocketInUse as exc:
            # Another runtime on this host hosts NRI there: pre-registered plugins still run, none can connect.
            log.error("NRI socket not opened", extra={"fields": {"path": str(path), "error": str(exc)}})
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bound here, not by asyncio: the process-wide umask must not outlast this synchronous step.
            with file_creation_mask(0o177):
                listener.bind(str(path))
            self._server = await asyncio.start_unix_server(self._accepted, sock=listener)
        except BaseException:
            listener.close()
            raise
        log.info("NRI socket listening", extra={"fields": {"path": str(path)}})

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        plugin = Plugin(reader, writer, self.runtime.update_containers)
        task = asyncio.current_task()
        assert task is not None
        self._joining.add(task)
        try:
            with contextlib.suppress(RegistrationFailed):  # logged in _join
                await self._join(plugin)
        finally:
            self._joining.discard(task)

    async def _join(self, plugin: Plugin) -> None:
        settings = self.settings
        try:
            await plugin.register_and_configure(
                self.runtime.name,
                self.runtime.version,
                settings.plugin_registration_timeout,
                settings.plugin_request_timeout,
            )
            async with self.gate.synchronization(), self._events:
                pods, containers = await self.runtime.snapshot()
                request = nri.SynchronizeRequest(pods=pods, containers=containers)
                # A plugin has the registration timeout to synchronize: it may have much to take in.
                reply = await plugin.call(
                    "Synchronize", request, nri.SynchronizeResponse, settings.plugin_registration_timeout
                )
                self._plugins.append(plugin)
                self._plugins.sort(key=lambda p: (p.index, p.base))
        except (RegistrationFailed, TimeoutError, ConnectionClosed, ttrpc.TtrpcError, ttrpc.CallFailed) as exc:
            log.warning(
                "NRI plugin not admitted", extra={"fields": {"plugin": plugin.name, "error": str(exc) or "timed out"}}
            )
            await plugin.close()
            raise RegistrationFailed(str(exc)) from exc
        except BaseException:
            await plugin.close()
            raise
        log.info(
            "NRI plugin synchronized",
            extra={"fields": {"plugin": plugin.name, "events": f"{plugin.events:#x}", "launched": plugin.launched}},
        )
        if reply.update:
            failed = await self.runtime.update_containers(plugin.name, list(reply.update), [])
            if failed:
                log.warning(
                    "NRI synchronize updates failed", extra={"fields": {"plugin": plugin.name, "count": len(failed)}}
                )

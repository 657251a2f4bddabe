"""One NRI plugin as pycri sees it: its connection, name, subscription, and its own calls
to pycri (RegisterPlugin, UpdateContainers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from pycri.nri import ttrpc
from pycri.nri.connection import Connection
from pycri.nri.pb import api_pb2 as nri

log = logging.getLogger(__name__)

_INDEX = re.compile(r"[0-9]{2}")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
# Every event a plugin may subscribe to: bit (event - 1) of its mask.
VALID_EVENTS = (1 << (nri.LAST - 1)) - 1
KILL_WAIT_SECONDS = 5.0

Reply = TypeVar("Reply", bound=Message)
# What pycri does for a plugin's UpdateContainers: apply the updates and evictions, return the failed updates.
UpdateContainers = Callable[
    [str, list[nri.ContainerUpdate], list[nri.ContainerEviction]], Awaitable[list[nri.ContainerUpdate]]
]


class RegistrationFailed(Exception):
    """The plugin did not register, or registered or configured itself wrongly."""


def check_index(index: str) -> None:
    if not _INDEX.fullmatch(index):
        raise RegistrationFailed(f"plugin index {index!r} is not two digits")


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise RegistrationFailed(f"plugin name {name!r} is empty or has characters outside [A-Za-z0-9_.+-]")


class Plugin:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        update_containers: UpdateContainers,
        *,
        index: str = "",
        base: str = "",
        config: str = "",
        process: asyncio.subprocess.Process | None = None,
    ) -> None:
        self.index = index
        self.base = base
        self.config = config
        self.process = process
        self.events = 0
        self._update_containers = update_containers
        self._registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connection = Connection(reader, writer, self._serve, label=self.name)
        self.connection.start()

    @property
    def name(self) -> str:
        return f"{self.index or '??'}-{self.base or 'plugin'}"

    @property
    def launched(self) -> bool:
        """Started by pycri from the plugin dir (else it connected to the socket by itself)."""
        return self.process is not None

    def subscribed(self, event: int) -> bool:
        return bool(self.events & (1 << (event - 1)))

    async def register_and_configure(
        self, runtime_name: str, runtime_version: str, registration_timeout: float, request_timeout: float
    ) -> None:
        """Wait for RegisterPlugin, then Configure it and take its subscription."""
        closed = asyncio.ensure_future(self.connection.closed.wait())
        waiters: set[asyncio.Future[Any]] = {self._registered, closed}
        try:
            done, _ = await asyncio.wait(waiters, timeout=registration_timeout, return_when="FIRST_COMPLETED")
        finally:
            closed.cancel()
        if self._registered not in done:
            raise RegistrationFailed("connection closed before registering" if done else "registration timed out")
        self._registered.result()
        request = nri.ConfigureRequest(
            config=self.config,
            runtime_name=runtime_name,
            runtime_version=runtime_version,
            registration_timeout=int(registration_timeout * 1000),
            request_timeout=int(request_timeout * 1000),
        )
        reply = await self.call("Configure", request, nri.ConfigureResponse, request_timeout)
        events = reply.events & 0xFFFFFFFF
        if events & ~VALID_EVENTS:
            raise RegistrationFailed(f"plugin subscribed to unknown events (mask {events:#x})")
        self.events = events or VALID_EVENTS

    async def call(self, method: str, request: Message, reply: type[Reply], timeout: float) -> Reply:
        return await self.connection.call(method, request, reply, timeout)

    async def close(self) -> None:
        """Drop the connection and end a plugin pycri started."""
        self.connection.close()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), KILL_WAIT_SECONDS)

    async def _serve(self, method: str, payload: bytes) -> bytes:
        if method == "RegisterPlugin":
            return self._register(nri.RegisterPluginRequest.FromString(payload)).SerializeToString()
        if method == "UpdateContainers":
            request = nri.UpdateContainersRequest.FromString(payload)
            failed = await self._update_containers(self.name, list(request.update), list(request.evict))
            return nri.UpdateContainersResponse(failed=failed).SerializeToString()
        raise ttrpc.CallFailed(ttrpc.Code.UNIMPLEMENTED, f"method {method} is not served here")

    def _register(self, request: nri.RegisterPluginRequest) -> nri.Empty:
        if self._registered.done():
            raise ttrpc.CallFailed(ttrpc.Code.FAILED_PRECONDITION, f"plugin {self.name} is already registered")
        if not self.launched:  # a started plugin is known by its file name
            try:
                check_name(request.plugin_name)
                check_index(request.plugin_idx)
            except RegistrationFailed as exc:
                self._registered.set_exception(exc)
                raise ttrpc.CallFailed(ttrpc.Code.INVALID_ARGUMENT, str(exc)) from None
            self.index, self.base = request.plugin_idx, request.plugin_name
            self.connection.label = self.name
        log.info(
            "NRI plugin registered",
            extra={"fields": {"plugin": self.name, "nri_version": request.NRI_version or "unknown"}},
        )
        self._registered.set_result(None)
        return nri.Empty()

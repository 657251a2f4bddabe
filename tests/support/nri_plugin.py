"""A test NRI plugin in Python, on pycri's own framing (the plugin end of pycri.nri.connection).

It registers, subscribes to the events it is given, records every call it gets in order,
and answers as the test asks: an adjustment for CreateContainer, an error, or no answer
at all (it hangs). It can also call the runtime unasked (UpdateContainers). Run as a
program it connects to the socket NRI_PLUGIN_SOCKET names (a plugin pycri started from
its plugin dir) and appends what it gets to the file in NRI_TEST_RECORD.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pycri.nri import ttrpc
from pycri.nri.connection import PLUGIN_END, Connection
from pycri.nri.pb import api_pb2 as nri

# The reply message type of each Plugin method.
REPLIES: dict[str, type] = {
    "Configure": nri.ConfigureResponse,
    "Synchronize": nri.SynchronizeResponse,
    "Shutdown": nri.Empty,
    "RunPodSandbox": nri.RunPodSandboxResponse,
    "UpdatePodSandbox": nri.UpdatePodSandboxResponse,
    "PostUpdatePodSandbox": nri.PostUpdatePodSandboxResponse,
    "StopPodSandbox": nri.StopPodSandboxResponse,
    "RemovePodSandbox": nri.RemovePodSandboxResponse,
    "CreateContainer": nri.CreateContainerResponse,
    "PostCreateContainer": nri.PostCreateContainerResponse,
    "StartContainer": nri.StartContainerResponse,
    "PostStartContainer": nri.PostStartContainerResponse,
    "UpdateContainer": nri.UpdateContainerResponse,
    "PostUpdateContainer": nri.PostUpdateContainerResponse,
    "StopContainer": nri.StopContainerResponse,
    "RemoveContainer": nri.RemoveContainerResponse,
    "StateChange": nri.Empty,
    "ValidateContainerAdjustment": nri.ValidateContainerAdjustmentResponse,
}
REQUESTS: dict[str, type] = {
    "Configure": nri.ConfigureRequest,
    "Synchronize": nri.SynchronizeRequest,
    "Shutdown": nri.Empty,
    "StateChange": nri.StateChangeEvent,
    **{method: getattr(nri, f"{method}Request") for method in REPLIES if hasattr(nri, f"{method}Request")},
}


@dataclass
class Call:
    method: str
    request: object
    at: float

    @property
    def pod_id(self) -> str:
        pod = getattr(self.request, "pod", None)
        return pod.id if pod is not None else ""

    @property
    def container_id(self) -> str:
        container = getattr(self.request, "container", None)
        return container.id if container is not None else ""


@dataclass
class RecordingPlugin:
    name: str
    index: str = "50"
    events: Iterable[int] = ()
    # Per method: an error text to answer with, or a reply to send (CreateContainer's adjustment...).
    fail: dict[str, str] = field(default_factory=dict)
    replies: dict[str, object] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    connection: Connection | None = None
    synchronized: asyncio.Event = field(default_factory=asyncio.Event)
    # Where each call is also written as a line "<method> <pod id> <container id>" (a started plugin's record).
    record: Path | None = None

    async def connect(self, socket_path: Path | None = None, fd: int | None = None) -> None:
        """Connect (to the socket, or on an inherited socket fd) and register; returns once registered."""
        if fd is not None:
            reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
        else:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        self.connection = Connection(reader, writer, self._serve, label=f"{self.index}-{self.name}", side=PLUGIN_END)
        self.connection.start()
        request = nri.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.index, NRI_version="v0.12.1")
        await self.connection.call("RegisterPlugin", request, nri.Empty, timeout=10)

    async def update_containers(
        self,
        updates: list[nri.ContainerUpdate],
        evictions: list[nri.ContainerEviction] = (),  # type: ignore[assignment]
    ) -> list[nri.ContainerUpdate]:
        assert self.connection is not None
        request = nri.UpdateContainersRequest(update=updates, evict=list(evictions))
        reply = await self.connection.call("UpdateContainers", request, nri.UpdateContainersResponse, timeout=30)
        return list(reply.failed)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()

    def methods(self, container_id: str = "", pod_id: str = "") -> list[str]:
        """The methods called, in order; only those about this container or pod when one is named."""
        return [
            call.method
            for call in self.calls
            if (not container_id or call.container_id == container_id) and (not pod_id or call.pod_id == pod_id)
        ]

    async def _serve(self, method: str, payload: bytes) -> bytes:
        request = REQUESTS[method].FromString(payload) if method in REQUESTS else None
        call = Call(method, request, time.monotonic())
        self.calls.append(call)
        if self.record is not None:
            with self.record.open("a") as out:
                out.write(f"{method} {call.pod_id or '-'} {call.container_id or '-'}\n")
        if method in self.hang:
            await asyncio.Event().wait()
        if method in self.fail:
            raise ttrpc.CallFailed(ttrpc.Code.UNKNOWN, self.fail[method])
        if method == "Configure":
            mask = 0
            for event in self.events:
                mask |= 1 << (event - 1)
            return nri.ConfigureResponse(events=mask).SerializeToString()
        if method == "Synchronize":
            self.synchronized.set()
        if method not in REPLIES:
            raise ttrpc.CallFailed(ttrpc.Code.UNIMPLEMENTED, f"{method} is not implemented")
        reply = self.replies.get(method) or REPLIES[method]()
        return reply.SerializeToString()  # type: ignore[attr-defined,no-any-return]


async def _run_launched() -> None:
    """As a program pycri started: serve until pycri closes the connection."""
    plugin = RecordingPlugin(
        os.environ["NRI_PLUGIN_NAME"], os.environ["NRI_PLUGIN_IDX"], record=Path(os.environ["NRI_TEST_RECORD"])
    )
    await plugin.connect(fd=int(os.environ["NRI_PLUGIN_SOCKET"]))
    assert plugin.connection is not None
    await plugin.connection.closed.wait()


if __name__ == "__main__":
    asyncio.run(_run_launched())

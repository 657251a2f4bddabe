"""Exec, Attach and PortForward: check a request, hand out its one-time URL, and run the
session when the client comes for it (the container or pod is looked up again then)."""

from __future__ import annotations

import functools
import logging

from pycri.api import api_pb2
from pycri.config import Config, StreamingSection
from pycri.container.service import ContainerService
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound
from pycri.sandbox.service import SandboxService
from pycri.state.containers import ContainerRecord, ContainerState
from pycri.state.sandboxes import SandboxState
from pycri.stream.attach import run_attach
from pycri.stream.exec import run_exec
from pycri.stream.limits import ConnectionLimits
from pycri.stream.portforward import PodConnector, connect_in_netns
from pycri.stream.remotecommand import CommandStreams, Outcome
from pycri.stream.server import CommandRequest, ServerOptions, StreamRequest, StreamServer, tls_context
from pycri.stream.tokens import TokenCache

log = logging.getLogger(__name__)


def server_options(section: StreamingSection) -> ServerOptions:
    limits = ConnectionLimits(
        websocket_max_message_bytes=section.websocket_max_message_bytes,
        spdy_max_streams=section.spdy_max_streams,
        spdy_stream_buffer_bytes=section.spdy_stream_buffer_bytes,
        idle_timeout=section.idle_timeout,
    )
    tls = None
    if section.tls_cert_file is not None and section.tls_key_file is not None:
        tls = tls_context(str(section.tls_cert_file), str(section.tls_key_file))
    return ServerOptions(section.address, section.port, limits, tls)


class StreamService:
    def __init__(self, config: Config, containers: ContainerService, sandboxes: SandboxService) -> None:
        self._containers = containers
        self._sandboxes = sandboxes
        tokens: TokenCache[StreamRequest] = TokenCache(config.streaming.token_ttl)
        self.server = StreamServer(server_options(config.streaming), tokens, self)

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    # ---- the RPCs ----

    def exec_url(self, request: api_pb2.ExecRequest) -> str:
        if not request.cmd:
            raise InvalidArgument("cmd: empty")
        self._check_command(request)
        return self.server.url(request)

    def attach_url(self, request: api_pb2.AttachRequest) -> str:
        self._check_command(request)
        return self.server.url(request)

    def port_forward_url(self, request: api_pb2.PortForwardRequest) -> str:
        sandbox = self._sandboxes.get(request.pod_sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        bad = [port for port in request.port if not 0 < port < 1 << 16]
        if bad:
            raise InvalidArgument(f"port: {bad[0]} is not a TCP port")
        return self.server.url(request)

    def _check_command(self, request: CommandRequest) -> None:
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be set")
        self._containers.running(request.container_id)

    # ---- sessions (called by the server) ----

    async def run_command(self, request: CommandRequest, streams: CommandStreams) -> Outcome:
        record = self._running_container(request.container_id)
        if record is None:
            return Outcome(error=f"container {request.container_id} is not running")
        bundle = self._containers.ctx.bundle_dir(record.id)
        if isinstance(request, api_pb2.ExecRequest):
            runtime = self._containers.ctx.runtime(record.runtime_handler)
            return await run_exec(runtime, record.id, bundle, list(request.cmd), streams)
        return await run_attach(bundle, streams, stdin_once=record.config.stdin_once)

    def pod_connector(self, request: api_pb2.PortForwardRequest) -> tuple[str, PodConnector]:
        try:
            sandbox = self._sandboxes.get(request.pod_sandbox_id)
        except (NotFound, InvalidArgument) as error:
            raise FileNotFoundError(str(error)) from None
        if sandbox.state is not SandboxState.READY:
            raise FileNotFoundError(f"pod sandbox {sandbox.id} is not ready")
        return sandbox.id, functools.partial(connect_in_netns, sandbox.netns_path)

    def _running_container(self, container_id: str) -> ContainerRecord | None:
        try:
            record = self._containers.get(container_id)
        except (NotFound, InvalidArgument):
            return None
        return record if record.state is ContainerState.RUNNING else None

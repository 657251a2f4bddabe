"""GetContainerEvents: a stream of container lifecycle events (kubelet's evented PLEG)."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.GetEventsRequest) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    async for event in daemon.state.events.subscribe():
        yield event

"""ListContainers: every container, or those the filter picks."""

from pycri.api import api_pb2
from pycri.container.views import container_entry, matches
from pycri.daemon import Daemon


def listed(daemon: Daemon, wanted: api_pb2.ContainerFilter) -> list[api_pb2.Container]:
    full_id = None
    if wanted.id:
        found = daemon.containers.find_quietly(wanted.id)
        if found is None:
            return []
        full_id = found.id
    entries = []
    for record in daemon.containers.records():
        daemon.containers.refresh(record)
        if matches(record, wanted, full_id):
            entries.append(container_entry(record))
    return entries


async def handle(daemon: Daemon, request: api_pb2.ListContainersRequest) -> api_pb2.ListContainersResponse:
    return api_pb2.ListContainersResponse(containers=listed(daemon, request.filter))

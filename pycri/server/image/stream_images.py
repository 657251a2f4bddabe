"""StreamImages: ListImages in pages, for nodes with many images."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.server.paging import pages


async def handle(daemon: Daemon, request: api_pb2.StreamImagesRequest) -> AsyncIterator[api_pb2.StreamImagesResponse]:
    images = await daemon.images.list(request.filter.image.image)
    for page in pages(images):
        yield api_pb2.StreamImagesResponse(images=page)

"""StreamImages: ListImages in pages, for nodes with many images."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon

PAGE_SIZE = 100


async def handle(daemon: Daemon, request: api_pb2.StreamImagesRequest) -> AsyncIterator[api_pb2.StreamImagesResponse]:
    images = await daemon.images.list(request.filter.image.image)
    for start in range(0, len(images), PAGE_SIZE):
        yield api_pb2.StreamImagesResponse(images=images[start : start + PAGE_SIZE])

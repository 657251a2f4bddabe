"""StreamImages: ListImages in pages, for nodes with many images."""

from collections.abc import AsyncIterator

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.image.reference import check_image_field
from pycri.server.paging import pages


async def handle(daemon: Daemon, request: api_pb2.StreamImagesRequest) -> AsyncIterator[api_pb2.StreamImagesResponse]:
    image_filter = request.filter.image.image
    if image_filter:
        check_image_field(image_filter, "filter.image.image")
    images = await daemon.images.list(image_filter)
    for page in pages(images):
        yield api_pb2.StreamImagesResponse(images=page)

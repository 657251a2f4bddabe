"""ListImages: every image, or those a filter's reference names."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.image.reference import check_image_field


async def handle(daemon: Daemon, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
    image_filter = request.filter.image.image
    if image_filter:
        check_image_field(image_filter, "filter.image.image")
    return api_pb2.ListImagesResponse(images=await daemon.images.list(image_filter))

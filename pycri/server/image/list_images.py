"""ListImages: every image, or those a filter's reference names."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
    return api_pb2.ListImagesResponse(images=await daemon.images.list(request.filter.image.image))

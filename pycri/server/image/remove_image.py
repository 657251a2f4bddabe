"""RemoveImage: by ID, tag or digest; an absent image is not an error."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.image.reference import check_image_field


async def handle(daemon: Daemon, request: api_pb2.RemoveImageRequest) -> api_pb2.RemoveImageResponse:
    check_image_field(request.image.image, "image.image")
    await daemon.images.remove(request.image.image)
    return api_pb2.RemoveImageResponse()

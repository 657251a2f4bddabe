"""ImageStatus: one image, or an empty reply when it is not there."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.image.reference import check_image_field


async def handle(daemon: Daemon, request: api_pb2.ImageStatusRequest) -> api_pb2.ImageStatusResponse:
    check_image_field(request.image.image, "image.image")
    found = await daemon.images.status(request.image.image, verbose=request.verbose)
    if found is None:
        return api_pb2.ImageStatusResponse()
    image, info = found
    return api_pb2.ImageStatusResponse(image=image, info=info)

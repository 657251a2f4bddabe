"""RemoveImage: by ID, tag or digest; an absent image is not an error."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.RemoveImageRequest) -> api_pb2.RemoveImageResponse:
    await daemon.images.remove(request.image.image)
    return api_pb2.RemoveImageResponse()

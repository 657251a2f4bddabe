"""PullImage: fetch an image from its registry and unpack it; replies with the image ID."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.PullImageRequest) -> api_pb2.PullImageResponse:
    auth = request.auth if request.HasField("auth") else None
    image_id = await daemon.images.pull(request.image.image, auth)
    return api_pb2.PullImageResponse(image_ref=image_id)

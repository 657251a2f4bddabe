"""PullImage: fetch an image from its registry and unpack it; replies with the image ID."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.errors import InvalidArgument
from pycri.image.auth import decode_basic_auth
from pycri.image.reference import InvalidReference, parse_reference
from pycri.request_fields import has_control_character


def _check_auth(auth: api_pb2.AuthConfig) -> None:
    """Refuse what would otherwise fail deep in the registry client, or be sent in a header."""
    if auth.auth:
        try:
            decode_basic_auth(auth.auth)
        except ValueError as exc:
            raise InvalidArgument(f"auth.auth: {exc}") from None
    for field in ("username", "password", "identity_token", "registry_token"):
        if has_control_character(getattr(auth, field)):
            raise InvalidArgument(f"auth.{field}: holds a control character")


async def handle(daemon: Daemon, request: api_pb2.PullImageRequest) -> api_pb2.PullImageResponse:
    try:
        parse_reference(request.image.image)
    except InvalidReference as exc:
        raise InvalidArgument(f"image.image: {exc}") from None
    auth = request.auth if request.HasField("auth") else None
    if auth is not None:
        _check_auth(auth)
    image_id = await daemon.images.pull(request.image.image, auth)
    return api_pb2.PullImageResponse(image_ref=image_id)

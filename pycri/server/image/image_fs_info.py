"""ImageFsInfo: bytes and inodes used by images (and container layers), for kubelet's eviction."""

from pycri.api import api_pb2
from pycri.daemon import Daemon


async def handle(daemon: Daemon, request: api_pb2.ImageFsInfoRequest) -> api_pb2.ImageFsInfoResponse:
    return await daemon.images.fs_info()

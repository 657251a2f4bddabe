"""ListMetricDescriptors: the series ListPodSandboxMetrics reports, with their help and label keys."""

from pycri.api import api_pb2
from pycri.daemon import Daemon
from pycri.stats.metrics import metric_descriptors


async def handle(
    daemon: Daemon, request: api_pb2.ListMetricDescriptorsRequest
) -> api_pb2.ListMetricDescriptorsResponse:
    return api_pb2.ListMetricDescriptorsResponse(descriptors=metric_descriptors())

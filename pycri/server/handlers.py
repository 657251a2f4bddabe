"""The handler tables: which module answers which CRI method."""

from __future__ import annotations

import grpc

from pycri.daemon import Daemon
from pycri.server.dispatch import Handler, service_handler
from pycri.server.image import image_fs_info, image_status, list_images, pull_image, remove_image, stream_images
from pycri.server.runtime import (
    attach,
    checkpoint_container,
    checkpoint_pod,
    container_stats,
    container_status,
    create_container,
    exec,
    exec_sync,
    get_container_events,
    list_container_stats,
    list_containers,
    list_metric_descriptors,
    list_pod_sandbox,
    list_pod_sandbox_metrics,
    list_pod_sandbox_stats,
    pod_sandbox_stats,
    pod_sandbox_status,
    port_forward,
    remove_container,
    remove_pod_sandbox,
    reopen_container_log,
    restore_pod,
    run_pod_sandbox,
    runtime_config,
    start_container,
    status,
    stop_container,
    stop_pod_sandbox,
    stream_container_stats,
    stream_containers,
    stream_pod_sandbox_metrics,
    stream_pod_sandbox_stats,
    stream_pod_sandboxes,
    update_container_resources,
    update_pod_sandbox_resources,
    update_runtime_config,
    version,
)

RUNTIME_SERVICE: dict[str, Handler] = {
    "Version": version.handle,
    "Status": status.handle,
    "RuntimeConfig": runtime_config.handle,
    "UpdateRuntimeConfig": update_runtime_config.handle,
    "RunPodSandbox": run_pod_sandbox.handle,
    "StopPodSandbox": stop_pod_sandbox.handle,
    "RemovePodSandbox": remove_pod_sandbox.handle,
    "PodSandboxStatus": pod_sandbox_status.handle,
    "ListPodSandbox": list_pod_sandbox.handle,
    "StreamPodSandboxes": stream_pod_sandboxes.handle,
    "CreateContainer": create_container.handle,
    "StartContainer": start_container.handle,
    "StopContainer": stop_container.handle,
    "RemoveContainer": remove_container.handle,
    "ContainerStatus": container_status.handle,
    "ListContainers": list_containers.handle,
    "StreamContainers": stream_containers.handle,
    "ExecSync": exec_sync.handle,
    "Exec": exec.handle,
    "Attach": attach.handle,
    "PortForward": port_forward.handle,
    "UpdateContainerResources": update_container_resources.handle,
    "UpdatePodSandboxResources": update_pod_sandbox_resources.handle,
    "ReopenContainerLog": reopen_container_log.handle,
    "CheckpointContainer": checkpoint_container.handle,
    "CheckpointPod": checkpoint_pod.handle,
    "RestorePod": restore_pod.handle,
    "GetContainerEvents": get_container_events.handle,
    "ContainerStats": container_stats.handle,
    "ListContainerStats": list_container_stats.handle,
    "StreamContainerStats": stream_container_stats.handle,
    "PodSandboxStats": pod_sandbox_stats.handle,
    "ListPodSandboxStats": list_pod_sandbox_stats.handle,
    "StreamPodSandboxStats": stream_pod_sandbox_stats.handle,
    "ListMetricDescriptors": list_metric_descriptors.handle,
    "ListPodSandboxMetrics": list_pod_sandbox_metrics.handle,
    "StreamPodSandboxMetrics": stream_pod_sandbox_metrics.handle,
}

IMAGE_SERVICE: dict[str, Handler] = {
    "PullImage": pull_image.handle,
    "ListImages": list_images.handle,
    "StreamImages": stream_images.handle,
    "ImageStatus": image_status.handle,
    "RemoveImage": remove_image.handle,
    "ImageFsInfo": image_fs_info.handle,
}


def runtime_service_handlers(daemon: Daemon) -> grpc.GenericRpcHandler:
    return service_handler("RuntimeService", RUNTIME_SERVICE, daemon)


def image_service_handlers(daemon: Daemon) -> grpc.GenericRpcHandler:
    return service_handler("ImageService", IMAGE_SERVICE, daemon)

"""Container and pod stats through gRPC, and the pod networking whose traffic they count: a
busybox httpd in a pod answers the host at the pod IP, another pod, and a host port on 127.0.0.1."""

from __future__ import annotations

import pytest

from pycri.api import api_pb2
from tests.integration.test_cni import free_local_port, wait_for_http
from tests.support.pods import (
    SLEEP_FOREVER,
    Pod,
    Workloads,
    container_config,
    shell,
)

pytestmark = pytest.mark.integration

HTTP_PORT = 8080
PAGE = "hello from the pod\n"
MiB = 1024 * 1024


def web_server(work: Workloads, pod: Pod, busybox: str) -> str:
    """Run busybox httpd serving PAGE on HTTP_PORT in `pod`; the container id."""
    script = f"echo -n '{PAGE}' > /var/www/index.html && exec httpd -f -p {HTTP_PORT} -h /var/www"
    return work.run(pod, container_config("web", busybox, *shell(script), labels={"role": "web"}))


def pod_ip(work: Workloads, pod: Pod) -> str:
    return work.pod_status(pod.id).network.ip


def container_stats(work: Workloads, container_id: str) -> api_pb2.ContainerStats:
    return work.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=container_id)).stats


def pod_stats(work: Workloads, pod: Pod) -> api_pb2.PodSandboxStats:
    return work.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod.id)).stats


# ---- networking ----


def test_a_pod_serves_the_host_at_its_ip(work: Workloads, busybox: str) -> None:
    pod = work.pod("web")
    web_server(work, pod, busybox)
    assert wait_for_http(pod_ip(work, pod), HTTP_PORT) == PAGE


def test_one_pod_reaches_another(work: Workloads, busybox: str) -> None:
    server, client = work.pod("server"), work.pod("client")
    web_server(work, server, busybox)
    address = pod_ip(work, server)
    wait_for_http(address, HTTP_PORT)
    client_id = work.run(client, container_config("client", busybox, *SLEEP_FOREVER))
    assert work.output(client_id, "wget", "-q", "-O", "-", f"http://{address}:{HTTP_PORT}/index.html") == PAGE


def test_a_host_port_answers_on_localhost(work: Workloads, busybox: str) -> None:
    host_port = free_local_port()
    mapping = api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=HTTP_PORT, host_port=host_port)
    pod = work.pod("published", port_mappings=[mapping])
    web_server(work, pod, busybox)
    assert wait_for_http("127.0.0.1", host_port) == PAGE


# ---- stats ----


def test_container_stats_report_cpu_memory_and_a_growing_writable_layer(work: Workloads, busybox: str) -> None:
    pod = work.pod("measured")
    container_id = work.run(pod, container_config("measured", busybox, *SLEEP_FOREVER, labels={"app": "m"}))
    work.output(container_id, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")

    before = container_stats(work, container_id)
    assert before.attributes.id == container_id and before.attributes.metadata.name == "measured"
    assert dict(before.attributes.labels) == {"app": "m"}
    assert before.cpu.usage_core_nano_seconds.value > 0 and before.cpu.timestamp > 0
    assert before.memory.working_set_bytes.value > 0
    assert before.writable_layer.fs_id.mountpoint == str(work.root_dir)

    work.output(container_id, "dd", "if=/dev/zero", "of=/written", "bs=1M", "count=4")
    after = container_stats(work, container_id)
    assert after.writable_layer.used_bytes.value >= before.writable_layer.used_bytes.value + 4 * MiB
    assert after.writable_layer.inodes_used.value > before.writable_layer.inodes_used.value


def test_list_container_stats_picks_running_containers_by_filter(work: Workloads, busybox: str) -> None:
    first, second = work.pod("first"), work.pod("second")
    kept = work.run(first, container_config("kept", busybox, *SLEEP_FOREVER, labels={"pick": "yes"}))
    other = work.run(first, container_config("other", busybox, *SLEEP_FOREVER, labels={"pick": "no"}))
    elsewhere = work.run(second, container_config("elsewhere", busybox, *SLEEP_FOREVER, labels={"pick": "yes"}))
    finished = work.run(first, container_config("finished", busybox, "true", labels={"pick": "yes"}))
    work.wait_for_exit(finished)

    def ids(**filter_fields: object) -> set[str]:
        request = api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(**filter_fields))
        return {stats.attributes.id for stats in work.runtime.ListContainerStats(request).stats}

    assert ids(pod_sandbox_id=first.id) == {kept, other}
    assert ids(id=kept[:12]) == {kept}
    assert ids(label_selector={"pick": "yes"}) >= {kept, elsewhere}
    assert finished not in ids()
    assert ids(pod_sandbox_id=first.id, label_selector={"pick": "yes"}) == {kept}


def test_stream_container_stats_sends_what_the_list_has(work: Workloads, busybox: str) -> None:
    pod = work.pod("streamed")
    container_id = work.run(pod, container_config("streamed", busybox, *SLEEP_FOREVER))
    request = api_pb2.StreamContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod.id))
    streamed = work.runtime.StreamContainerStats(request)
    assert [stats.attributes.id for reply in streamed for stats in reply.container_stats] == [container_id]


def test_stream_pod_sandbox_stats_sends_what_the_list_has(work: Workloads) -> None:
    pod = work.pod("streamed-pod")
    request = api_pb2.StreamPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(id=pod.id))
    streamed = work.runtime.StreamPodSandboxStats(request)
    assert [stats.attributes.id for reply in streamed for stats in reply.pod_sandbox_stats] == [pod.id]


def test_pod_stats_count_network_traffic_and_include_the_containers(work: Workloads, busybox: str) -> None:
    pod = work.pod("counted", labels={"stats": "pod"})
    web = web_server(work, pod, busybox)
    idle = work.run(pod, container_config("idle", busybox, *SLEEP_FOREVER))
    address = pod_ip(work, pod)
    wait_for_http(address, HTTP_PORT)
    before = pod_stats(work, pod).linux.network.default_interface
    for _ in range(3):
        assert wait_for_http(address, HTTP_PORT) == PAGE

    stats = pod_stats(work, pod)
    assert stats.attributes.id == pod.id and dict(stats.attributes.labels) == {"stats": "pod"}
    interface = stats.linux.network.default_interface
    assert interface.name == "eth0" and [i.name for i in stats.linux.network.interfaces] == ["eth0"]
    assert (
        interface.rx_bytes.value > before.rx_bytes.value
        and interface.tx_bytes.value > before.tx_bytes.value + 3 * len(PAGE)
    )
    assert stats.linux.cpu.usage_core_nano_seconds.value > 0 and stats.linux.memory.working_set_bytes.value > 0
    assert stats.linux.process.process_count.value >= 2
    assert {container.attributes.id for container in stats.linux.containers} == {web, idle}

    request = api_pb2.ListPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(label_selector={"stats": "pod"}))
    listed = work.runtime.ListPodSandboxStats(request).stats
    assert [item.attributes.id for item in listed] == [pod.id]
    assert {container.attributes.id for container in listed[0].linux.containers} == {web, idle}

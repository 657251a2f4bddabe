"""What RunPodSandbox refuses before touching anything, and what it plans for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.config import Config, HandlerConfig
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.network.cni import PortMapping
from pycri.sandbox.plan import check_host_ports, plan_sandbox

pytestmark = pytest.mark.unit

NODE = api_pb2.NamespaceMode.NODE
CONTAINER = api_pb2.NamespaceMode.CONTAINER
SANDBOX_ID = "ab" * 32


def pod(**fields: object) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="uid-1"), hostname="web"
    )
    config.linux.security_context.namespace_options.pid = CONTAINER
    config.MergeFrom(api_pb2.PodSandboxConfig(**fields))
    return config


@pytest.fixture
def settings() -> Config:
    config = Config()
    config.runtime.handlers["kata"] = HandlerConfig(path=Path("/usr/bin/kata"))
    return config


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
def test_metadata_fields_are_required(settings: Config, field: str) -> None:
    config = pod()
    setattr(config.metadata, field, "")
    with pytest.raises(InvalidArgument, match=f"config.metadata.{field} is required"):
        plan_sandbox(config, "", settings)


def test_metadata_is_required(settings: Config) -> None:
    with pytest.raises(InvalidArgument, match="config.metadata is required"):
        plan_sandbox(api_pb2.PodSandboxConfig(), "", settings)


def test_runtime_handler(settings: Config) -> None:
    assert plan_sandbox(pod(), "", settings).runtime_handler == "runc"
    assert plan_sandbox(pod(), "kata", settings).runtime_handler == "kata"
    with pytest.raises(InvalidArgument, match="runtime handler 'gvisor' is not configured"):
        plan_sandbox(pod(), "gvisor", settings)


def test_default_pod_has_its_own_namespaces(settings: Config) -> None:
    plan = plan_sandbox(pod(), "", settings)
    assert plan.own_network and plan.own_ipc and not plan.shared_pid
    assert plan.hostname == "web"
    assert plan.log_directory == "/var/log/pycri/pods/default_web_uid-1"


def test_unset_pid_mode_means_a_shared_pid_namespace(settings: Config) -> None:
    config = pod()
    config.linux.ClearField("security_context")
    assert plan_sandbox(config, "", settings).shared_pid


def test_host_namespaces(settings: Config) -> None:
    config = pod(port_mappings=[api_pb2.PortMapping(container_port=80, host_port=80)])
    options = config.linux.security_context.namespace_options
    options.network, options.ipc, options.pid = NODE, NODE, NODE
    plan = plan_sandbox(config, "", settings)
    assert not plan.own_network and not plan.own_ipc and not plan.shared_pid
    assert plan.port_mappings == () and plan.dns is None


def test_target_mode_is_for_containers(settings: Config) -> None:
    config = pod()
    config.linux.security_context.namespace_options.pid = api_pb2.NamespaceMode.TARGET
    with pytest.raises(InvalidArgument, match="namespace_options.pid"):
        plan_sandbox(config, "", settings)


def test_user_namespace_without_mappings_is_refused(settings: Config) -> None:
    config = pod()
    config.linux.security_context.namespace_options.userns_options.mode = api_pb2.NamespaceMode.POD
    with pytest.raises(InvalidArgument, match="userns_options.uids: exactly one mapping"):
        plan_sandbox(config, "", settings)
    config.linux.security_context.namespace_options.userns_options.mode = NODE
    plan_sandbox(config, "", settings)


@pytest.mark.parametrize("hostname", ["a" * 65, "bad host", "-lead", "x\n"])
def test_bad_hostnames(settings: Config, hostname: str) -> None:
    with pytest.raises(InvalidArgument, match="config.hostname"):
        plan_sandbox(pod(hostname=hostname), "", settings)


def test_port_mappings(settings: Config) -> None:
    mappings = [
        api_pb2.PortMapping(protocol=api_pb2.Protocol.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
        api_pb2.PortMapping(container_port=80),  # no host port: nothing to publish
    ]
    plan = plan_sandbox(pod(port_mappings=mappings), "", settings)
    assert plan.port_mappings == (PortMapping(5353, 53, "udp", "127.0.0.1"),)


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        (api_pb2.PortMapping(container_port=80, host_port=70000), "host_port"),
        (api_pb2.PortMapping(container_port=0, host_port=80), "container_port"),
        (api_pb2.PortMapping(container_port=80, host_port=80, host_ip="localhost"), "host_ip"),
        (api_pb2.PortMapping(protocol=7, container_port=80, host_port=80), "protocol"),
    ],
)
def test_bad_port_mappings_name_the_field(settings: Config, mapping: api_pb2.PortMapping, field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"config.port_mappings\[0\].{field}"):
        plan_sandbox(pod(port_mappings=[mapping]), "", settings)


def test_bandwidth_annotations(settings: Config) -> None:
    config = pod()
    config.annotations["kubernetes.io/egress-bandwidth"] = "10M"
    plan = plan_sandbox(config, "", settings)
    assert plan.bandwidth is not None and plan.bandwidth.egress_rate == 10_000_000
    config.annotations["kubernetes.io/egress-bandwidth"] = "lots"
    with pytest.raises(InvalidArgument, match="kubernetes.io/egress-bandwidth"):
        plan_sandbox(config, "", settings)


def test_dns_settings_only_when_given(settings: Config) -> None:
    assert plan_sandbox(pod(), "", settings).dns is None
    plan = plan_sandbox(pod(dns_config=api_pb2.DNSConfig(servers=["10.96.0.10"])), "", settings)
    assert plan.dns is not None and plan.dns.servers == ("10.96.0.10",)


def test_sysctls_are_checked(settings: Config) -> None:
    config = pod()
    config.linux.sysctls["vm.swappiness"] = "1"
    with pytest.raises(InvalidArgument, match="vm.swappiness"):
        plan_sandbox(config, "", settings)


def test_relative_log_directory_is_refused(settings: Config) -> None:
    with pytest.raises(InvalidArgument, match="config.log_directory"):
        plan_sandbox(pod(log_directory="logs"), "", settings)


def test_host_port_conflicts() -> None:
    taken = [("other", PortMapping(8080, 80, "tcp", ""))]
    with pytest.raises(FailedPrecondition, match="already published by pod sandbox other"):
        check_host_ports([PortMapping(8080, 81, "tcp", "127.0.0.1")], taken)
    check_host_ports([PortMapping(8080, 80, "udp")], taken)
    check_host_ports([PortMapping(8081, 80, "tcp")], taken)
    pinned = [("other", PortMapping(9090, 80, "tcp", "127.0.0.1"))]
    check_host_ports([PortMapping(9090, 80, "tcp", "127.0.0.2")], pinned)
    with pytest.raises(FailedPrecondition):
        check_host_ports([PortMapping(9090, 80, "tcp", "0.0.0.0")], pinned)


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
@pytest.mark.parametrize("value", ["/etc", "..", "a/b", "x\0y", "line\nbreak", ".", "a..b", "tab\there"])
def test_metadata_that_could_name_another_path_is_refused(settings: Config, field: str, value: str) -> None:
    config = pod()
    setattr(config.metadata, field, value)
    with pytest.raises(InvalidArgument, match=f"config.metadata.{field}"):
        plan_sandbox(config, "", settings)


@pytest.mark.parametrize(("field", "limit"), [("name", 253), ("namespace", 253), ("uid", 128)])
def test_metadata_longer_than_kubernetes_allows_is_refused(settings: Config, field: str, limit: int) -> None:
    config = pod()
    setattr(config.metadata, field, "a" * limit)
    plan_sandbox(config, "", settings)
    setattr(config.metadata, field, "a" * (limit + 1))
    with pytest.raises(InvalidArgument, match=f"config.metadata.{field}: .* longer than {limit}"):
        plan_sandbox(config, "", settings)


def test_kubelet_metadata_is_accepted(settings: Config) -> None:
    config = pod()
    config.metadata.name = "kube-proxy-x7k2p.node-1.example"
    config.metadata.namespace = "kube-system"
    config.metadata.uid = "0e0f4fdb-7d0e-4c42-9f4e-3b54d3b8a1c7"
    plan = plan_sandbox(config, "", settings)
    expected = settings.runtime.default_log_dir / f"kube-system_{config.metadata.name}_{config.metadata.uid}"
    assert plan.log_directory == str(expected)


@pytest.mark.parametrize(
    "directory", ["logs", "/var/log/../../etc", "/var/log/pods/a\0b", "/var/log/\x80", "/" + "a" * 4096]
)
def test_a_log_directory_must_be_absolute_and_stay_put(settings: Config, directory: str) -> None:
    with pytest.raises(InvalidArgument, match="config.log_directory"):
        plan_sandbox(pod(log_directory=directory), "", settings)

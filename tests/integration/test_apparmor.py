"""AppArmor: RuntimeDefault is pycri's own profile where AppArmor is on, unconfined (and said
so in the runtime status) where it is off; a Localhost profile needs AppArmor."""

from __future__ import annotations

import json

import grpc
import pytest

from pycri.api import api_pb2
from pycri.oci.apparmor import apparmor_enabled
from tests.integration.test_sandbox_support import rpc_error
from tests.support.pods import SLEEP_FOREVER, Workloads, container_config

pytestmark = pytest.mark.integration
Profile = api_pb2.SecurityProfile


def sleeper(image: str, name: str, profile: api_pb2.SecurityProfile) -> api_pb2.ContainerConfig:
    config = container_config(name, image, *SLEEP_FOREVER)
    config.linux.security_context.apparmor.CopyFrom(profile)
    return config


def apparmor_status(work: Workloads) -> str:
    info = work.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    return str(json.loads(info["apparmor"]))


@pytest.mark.skipif(apparmor_enabled(), reason="AppArmor is enabled on this host: the other test covers it")
def test_without_apparmor_runtime_default_is_unconfined_and_localhost_is_refused(work: Workloads, busybox: str) -> None:
    assert "not enabled" in apparmor_status(work)
    pod = work.pod("no-apparmor")
    container_id = work.run(pod, sleeper(busybox, "default", Profile(profile_type=Profile.RuntimeDefault)))
    assert "apparmorProfile" not in work.info(container_id)["runtimeSpec"]["process"]
    assert work.status(container_id).state == api_pb2.ContainerState.CONTAINER_RUNNING
    error = rpc_error(
        work.create, pod, sleeper(busybox, "custom", Profile(profile_type=Profile.Localhost, localhost_ref="custom"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "AppArmor is not enabled" in error.details()


@pytest.mark.skipif(not apparmor_enabled(), reason="AppArmor is not enabled on this host (no /sys/module/apparmor)")
def test_with_apparmor_runtime_default_is_pycris_profile(work: Workloads, busybox: str) -> None:
    assert "pycri-default" in apparmor_status(work)
    pod = work.pod("apparmor")
    container_id = work.run(pod, sleeper(busybox, "default", Profile(profile_type=Profile.RuntimeDefault)))
    assert work.info(container_id)["runtimeSpec"]["process"]["apparmorProfile"] == "pycri-default"
    assert work.output(container_id, "cat", "/proc/self/attr/current").startswith("pycri-default")
    denied = work.exec(container_id, "sh", "-c", "echo 1 > /proc/sysrq-trigger")
    assert denied.exit_code != 0

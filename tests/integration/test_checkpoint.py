"""CheckpointContainer and CreateContainer from a checkpoint archive through a real pycri.

Checkpointing needs CRIU, and `criu check` passes only on some kernels: the round trip runs where
it passes and is skipped with CRIU's own reason elsewhere; where CRIU is unusable, the calls must
answer FAILED_PRECONDITION with that reason, make no archive and leave the container running."""

from __future__ import annotations

import asyncio
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from pycri.container.checkpoint_criu import probe_criu
from tests.integration.test_userns import in_pod, userns_pod
from tests.support.pods import CREATED, RUNNING, SLEEP_FOREVER, Workloads, container_config, shell, wait_until

pytestmark = pytest.mark.integration

CRIU = asyncio.run(probe_criu())
needs_criu = pytest.mark.skipif(not CRIU.usable, reason=f"CRIU is not usable here: {CRIU.reason}")
without_criu = pytest.mark.skipif(CRIU.usable, reason="CRIU is usable here: the refusal cannot be seen")


def _checkpoint(work: Workloads, container_id: str, location: Path) -> None:
    request = api_pb2.CheckpointContainerRequest(container_id=container_id, location=str(location))
    work.runtime.CheckpointContainer(request, timeout=120)


def _error(call: Callable[..., object], *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    return err.value


def test_bad_requests_are_refused_before_criu_is_asked(work: Workloads, busybox: str, tmp_path: Path) -> None:
    pod = work.pod("ckpt-args")
    container_id = work.run(pod, container_config("app", busybox, *SLEEP_FOREVER))
    unknown = _error(_checkpoint, work, "0" * 64, tmp_path / "x.tar")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    for location, why in (
        ("relative.tar", "not an absolute path"),
        (str(tmp_path / "no" / "x.tar"), "not an existing"),
    ):
        refused = _error(_checkpoint, work, container_id, location)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and why in refused.details()


def test_a_restore_annotation_set_by_the_client_has_no_effect(work: Workloads, busybox: str) -> None:
    # That a container was restored is pycri's record, not an annotation a request could carry.
    config = container_config("app", busybox, *SLEEP_FOREVER)
    config.annotations["io.pycri.checkpoint.restored-from"] = "/var/lib/forged.tar"
    container_id = work.create(work.pod("ckpt-forged"), config)
    assert work.status(container_id).state == CREATED
    work.start(container_id)
    assert work.output(container_id, "echo", "alive") == "alive\n"
    again = _error(work.start, container_id)
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION and "not created" in again.details()


@without_criu
def test_checkpoint_is_failed_precondition_with_criu_reason(work: Workloads, busybox: str, tmp_path: Path) -> None:
    pod = work.pod("ckpt-no-criu")
    container_id = work.run(pod, container_config("app", busybox, *SLEEP_FOREVER))
    refused = _error(_checkpoint, work, container_id, tmp_path / "ckpt.tar")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CRIU is not usable on this host" in refused.details() and CRIU.reason in refused.details()
    assert list(tmp_path.iterdir()) == []
    assert work.status(container_id).state == RUNNING
    assert work.output(container_id, "echo", "alive") == "alive\n"


@without_criu
def test_restore_is_failed_precondition_with_criu_reason(work: Workloads, busybox: str, tmp_path: Path) -> None:
    archive = tmp_path / "ckpt.tar"
    with tarfile.open(archive, "w") as out:
        out.add(tmp_path, arcname="checkpoint", recursive=False)
    pod = work.pod("ckpt-restore-no-criu")
    refused = _error(work.create, pod, container_config("app", str(archive)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and CRIU.reason in refused.details()
    assert work.list(pod_sandbox_id=pod.id) == [] and work.container_dirs() == []


def test_user_namespaces_are_refused_before_criu_is_asked(work: Workloads, busybox: str, tmp_path: Path) -> None:
    # Whatever CRIU could do here: the rootfs changes of such a container hold host IDs that
    # pycri would not map back, so neither direction is taken.
    work.node.base.chmod(0o711)  # the pod's root walks to its rootfs (mkdtemp makes the base 0700)
    pod = userns_pod(work, "ckpt-userns")
    container_id = work.run(pod, in_pod(pod, container_config("app", busybox, *SLEEP_FOREVER)))
    refused = _error(_checkpoint, work, container_id, tmp_path / "ckpt.tar")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "runs in its pod's user namespace" in refused.details()
    assert list(tmp_path.iterdir()) == [] and work.status(container_id).state == RUNNING
    assert work.output(container_id, "echo", "alive") == "alive\n"

    archive = tmp_path / "other.tar"  # refused before it is read
    archive.write_bytes(b"")
    refused = _error(work.create, pod, in_pod(pod, container_config("restored", str(archive))))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "into a pod with a user namespace of its own is not supported" in refused.details()
    assert [container.id for container in work.list(pod_sandbox_id=pod.id)] == [container_id]


@needs_criu
def test_checkpoint_then_restore_in_a_new_pod(work: Workloads, busybox: str, tmp_path: Path) -> None:
    pod = work.pod("ckpt-source")
    counter = shell("echo changed > /etc/marker; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")
    source = work.run(pod, container_config("counter", busybox, *counter))
    wait_until(lambda: work.exec(source, "cat", "/tmp/count").exit_code == 0, "the counter to start")
    archive = tmp_path / "counter.tar"
    _checkpoint(work, source, archive)
    assert work.status(source).state == RUNNING  # a forensic checkpoint: the container runs on
    with tarfile.open(archive) as written:
        names = set(written.getnames())
        config = json.load(written.extractfile("config.dump"))  # type: ignore[arg-type]
    assert {"checkpoint", "config.dump", "spec.dump", "status.dump", "rootfs-diff.tar", "deleted.files"} <= names
    assert config["id"] == source and config["rootfsImageName"] == busybox

    count_then = int(work.output(source, "cat", "/tmp/count"))
    work.stop(source)
    target_pod = work.pod("ckpt-target")
    restored = work.create(target_pod, container_config("counter", str(archive)))
    status = work.status(restored)
    assert status.state == RUNNING and status.image.image == busybox
    work.start(restored)  # kubelet starts what it created: already running, nothing to do
    assert work.output(restored, "cat", "/etc/marker") == "changed\n"
    time.sleep(0.5)
    assert int(work.output(restored, "cat", "/tmp/count")) >= count_then

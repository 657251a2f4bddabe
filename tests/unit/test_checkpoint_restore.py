"""CreateContainer from a checkpoint archive up to the runtime call, over fake host managers:
missing bind sources are made as the checkpointed container had them (file or directory), a
missing base image is NOT_FOUND telling the user to pull it, and that a container was restored
is pycri's own record, which no request annotation can forge.

Whether CRIU works here is taken as answered yes: nothing below reaches CRIU (the fake runtime
stands where `runc restore` would run)."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pycri.api import api_pb2
from pycri.container import checkpoint_criu
from pycri.container.checkpoint_archive import CheckpointConfig, partial_archive, write_archive, write_metadata
from pycri.errors import FailedPrecondition, NotFound, RuntimeFailure
from pycri.oci.runtime import ContainerStatus
from pycri.recovery.start import recover
from pycri.state.containers import ContainerState
from tests.support.fakes import BUSYBOX, FakeNode, build
from tests.unit.test_recovery import no_image_intents
from tests.unit.test_services import container_config, pod_config

pytestmark = pytest.mark.unit

FILE_MODE = 0o640


@pytest.fixture
async def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeNode]:
    async def usable() -> checkpoint_criu.CriuStatus:
        return checkpoint_criu.CriuStatus(True, "", "3.17.1")

    monkeypatch.setattr(checkpoint_criu, "probe_criu", usable)
    built = build(tmp_path)
    await recover(built.containers, built.sandboxes, built.intents, no_image_intents)
    yield built


def checkpoint_archive(tmp_path: Path, image_name: str, image_id: str, linux: dict[str, object] | None = None) -> Path:
    """An archive of a container that had a file bind-mounted at /etc/app.conf and a directory at
    /data (and the spec's `linux` section, when given)."""
    old = tmp_path / "old-node"
    (old / "data").mkdir(parents=True)
    (old / "app.conf").write_text("setting = 1\n")
    (old / "app.conf").chmod(FILE_MODE)
    mounts = [
        {"destination": "/etc/app.conf", "type": "bind", "source": str(old / "app.conf")},
        {"destination": "/data", "type": "bind", "source": str(old / "data")},
    ]
    staging = tmp_path / "staging"
    (staging / "checkpoint").mkdir(parents=True)
    (staging / "checkpoint" / "pages-1.img").write_bytes(b"\0" * 64)
    moment = datetime(2025, 1, 2, tzinfo=UTC)
    config = CheckpointConfig("c" * 64, "app", image_name, image_id, image_name, "runc", moment, moment)
    spec = {"ociVersion": "1.0.2", "mounts": mounts, **({"linux": linux} if linux is not None else {})}
    write_metadata(staging, config, spec, {})
    archive = tmp_path / "app.tar"
    write_archive(staging, archive, partial_archive(archive, "t"))
    return archive


def restore_config(archive: Path, new_sources: Path) -> api_pb2.ContainerConfig:
    config = container_config()
    config.image.image = str(archive)
    config.mounts.add(container_path="/etc/app.conf", host_path=str(new_sources / "conf" / "app.conf"))
    config.mounts.add(container_path="/data", host_path=str(new_sources / "data"))
    return config


async def test_missing_bind_sources_are_made_as_the_checkpoint_had_them(node: FakeNode, tmp_path: Path) -> None:
    archive = checkpoint_archive(tmp_path, BUSYBOX.tags[0], BUSYBOX.id)
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    new_sources = tmp_path / "new-node"
    container_id = await node.containers.create(sandbox_id, restore_config(archive, new_sources), pod_config())
    conf = (new_sources / "conf" / "app.conf").lstat()
    assert stat.S_ISREG(conf.st_mode) and stat.S_IMODE(conf.st_mode) == FILE_MODE and conf.st_size == 0
    assert (new_sources / "conf").is_dir() and (new_sources / "data").is_dir()
    record = node.containers.get(container_id)
    assert (record.state, record.restored_from) == (ContainerState.RUNNING, str(archive))
    assert record.image_ref == BUSYBOX.tags[0]
    assert (node.config.state_dir / "containers" / container_id / "checkpoint" / "pages-1.img").is_file()
    await node.containers.start(container_id)  # kubelet's start: already running, nothing to do
    assert node.containers.get(container_id) == record


async def test_a_failed_restore_removes_the_sources_it_made(node: FakeNode, tmp_path: Path) -> None:
    archive = checkpoint_archive(tmp_path, BUSYBOX.tags[0], BUSYBOX.id)
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    new_sources = tmp_path / "new-node"
    node.runtime.fail_create = "criu failed"
    with pytest.raises(RuntimeFailure, match="criu failed"):
        await node.containers.create(sandbox_id, restore_config(archive, new_sources), pod_config())
    assert not new_sources.exists() and node.rows("containers") == 0 and node.rows("intents") == 0


async def test_a_missing_base_image_is_not_found_and_names_what_to_pull(node: FakeNode, tmp_path: Path) -> None:
    archive = checkpoint_archive(tmp_path, "registry.example/app:1", "sha256:" + "a" * 64)
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    new_sources = tmp_path / "new-node"
    with pytest.raises(NotFound) as refused:
        await node.containers.create(sandbox_id, restore_config(archive, new_sources), pod_config())
    assert "'registry.example/app:1'" in str(refused.value) and "pull" in str(refused.value)
    assert not new_sources.exists() and node.rows("containers") == 0 and node.rows("intents") == 0


async def test_a_restore_annotation_from_the_request_makes_no_restored_container(node: FakeNode) -> None:
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    config = container_config()
    config.annotations["io.pycri.checkpoint.restored-from"] = "/tmp/forged.tar"
    container_id = await node.containers.create(sandbox_id, config, pod_config())
    record = node.containers.get(container_id)
    assert (record.state, record.restored_from) == (ContainerState.CREATED, "")
    await node.containers.start(container_id)
    assert node.runtime.status[container_id] is ContainerStatus.RUNNING  # runc start did run
    with pytest.raises(FailedPrecondition, match="not created"):
        await node.containers.start(container_id)


async def test_an_archive_checkpointed_in_a_user_namespace_is_refused(node: FakeNode, tmp_path: Path) -> None:
    mapping = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    linux = {"uidMappings": mapping, "gidMappings": mapping}
    archive = checkpoint_archive(tmp_path, BUSYBOX.tags[0], BUSYBOX.id, linux)
    sandbox_id = await node.sandboxes.run(pod_config(), "")
    new_sources = tmp_path / "new-node"
    with pytest.raises(FailedPrecondition, match="checkpointed in a user namespace"):
        await node.containers.create(sandbox_id, restore_config(archive, new_sources), pod_config())
    assert not new_sources.exists() and node.rows("containers") == 0 and node.rows("intents") == 0

"""What every pod operation works with, and the teardown they share.

release() gives back what a running pod holds (pause process, network, namespace pins,
shm); remove() deletes what is left (cgroup, dirs). Each step is idempotent, so they
serve a failed RunPodSandbox, StopPodSandbox and RemovePodSandbox, and recovery of an
operation a crash cut short (from the record its intent holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pycri.cgroups import CgroupManager
from pycri.config import Config
from pycri.errors import DeadlineExceeded, FailedPrecondition, PycriError, Unavailable
from pycri.network.cni import CniManager, PodAttachment
from pycri.network.cni_exec import CniError, CniTimeout
from pycri.nri.hooks import Nri
from pycri.oci.driver import runtime_error
from pycri.oci.runtime import OciRuntimeError
from pycri.sandbox.namespaces import NamespaceManager
from pycri.sandbox.pause import PauseProcesses
from pycri.sandbox.plan import SandboxPlan
from pycri.state.intents import IntentLog
from pycri.state.memory import StateStore
from pycri.state.sandboxes import SandboxRecord

log = logging.getLogger(__name__)


def network_error(exc: CniError, what: str) -> PycriError:
    """DEADLINE_EXCEEDED when a plugin ran out of time, else UNAVAILABLE."""
    kind = DeadlineExceeded if isinstance(exc, CniTimeout) else Unavailable
    return kind(f"{what}: {exc}")


def attachment(record: SandboxRecord, plan: SandboxPlan | None = None) -> PodAttachment:
    """The pod's CNI attachment; without a plan (teardown, GC) it carries what DEL needs."""
    assert record.netns_path is not None
    metadata = record.metadata
    return PodAttachment(
        container_id=record.id,
        netns_path=record.netns_path,
        pod_name=metadata.name,
        pod_namespace=metadata.namespace,
        pod_uid=metadata.uid,
        port_mappings=plan.port_mappings if plan else (),
        bandwidth=plan.bandwidth if plan else None,
        dns=plan.dns if plan else None,
        cgroup_path=record.cgroup_parent,
        annotations=record.config.annotations,
    )


@dataclass
class SandboxContext:
    config: Config
    state: StateStore
    intents: IntentLog
    network: CniManager
    namespaces: NamespaceManager
    pause: PauseProcesses
    cgroups: CgroupManager
    nri: Nri = field(default_factory=Nri)

    async def release(self, record: SandboxRecord, network_attached: bool = True) -> None:
        """Every step runs even when one fails; then the first failure is raised."""
        failures: list[PycriError] = []
        if record.shared_pid:
            try:
                await self.pause.stop(record)
            except OciRuntimeError as exc:
                failures.append(runtime_error(exc, "stop the pod's pause process", FailedPrecondition))
        if record.netns_path is not None and network_attached:
            try:
                await self._detach_network(record)
            except CniError as exc:
                failures.append(network_error(exc, "pod network teardown failed"))
        await asyncio.to_thread(self.namespaces.release, record)
        if failures:
            raise failures[0]

    async def _detach_network(self, record: SandboxRecord) -> None:
        assert record.netns_path is not None
        if not await asyncio.to_thread(self.namespaces.netns_pinned, record.netns_path):
            # An unpinned namespace file is no namespace: plugins must get no CNI_NETNS, not this file.
            await asyncio.to_thread(self.namespaces.release, record)
        await self.network.delete(attachment(record))

    async def remove(self, record: SandboxRecord, made_log_directory: bool = False) -> None:
        if self.cgroups.owns_pod_parent(record.cgroup_parent):
            # pycri chose this cgroup (runc made it as the containers' parent); kubelet's are kubelet's.
            with contextlib.suppress(FileNotFoundError):
                await self.cgroups.remove(record.cgroup_parent)
        await asyncio.to_thread(_remove_dirs, record, made_log_directory)


def _remove_dirs(record: SandboxRecord, made_log_directory: bool) -> None:
    for directory in (record.state_dir, record.root_dir):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(directory)
    if made_log_directory:
        with contextlib.suppress(OSError):  # not empty: something else uses it
            Path(record.log_directory).rmdir()

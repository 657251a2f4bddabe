"""List and status latency at node density: pycri against containerd's CRI plugin.

Run as root from the repository: `.venv/bin/python bench/relist.py [--pods 100] [--containers-per-pod 5] [--calls 200]`.

Each runtime in turn (containerd first, when installed) gets the same node: pods made the way
kubelet makes them (RunPodSandbox, then CreateContainer and StartContainer for each container,
several pods at a time), each container busybox `sleep infinity` from the test images on a
docker-registry on 127.0.0.1. Once every container runs and the daemon has been idle for a
while, the benchmark reads the daemon's memory and times ListContainers (no filter),
ContainerStatus of one container, a kubelet relist (ListPodSandbox then ListContainers) and
ListPodSandbox, one call at a time over one channel, after warm-up calls. Then it stops and
removes every pod, checks the host for leftovers and stops the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from kubelet import RPC_TIMEOUT, Density, Kubelet  # noqa: E402
from peers import (  # noqa: E402
    BRIDGE,
    SUBNET,
    IsolatedContainerd,
    cgroup_dirs,
    containerd_available,
    containerd_version,
    nat_rules_in,
)

from pycri.api import api_pb2  # noqa: E402
from tests.integration.test_sandbox_support import Node, host_network_state, running_node  # noqa: E402
from tests.support.busybox_images import TestImages, build_test_images  # noqa: E402
from tests.support.daemon import mounts_under, remove_tree, short_tempdir  # noqa: E402
from tests.support.pods import pod_cgroup, remove_pod_cgroup  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

MONITOR_NAMES = ("conmon", "containerd-shim-runc-v2")
SHIM_EXIT_SECONDS = 30.0
MB = 1_000_000


@dataclass(frozen=True)
class Sampling:
    calls: int
    warmup: int
    settle_seconds: float


@dataclass(frozen=True)
class Latency:
    median: float
    p90: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        return cls(statistics.median(seconds), statistics.quantiles(seconds, n=10)[8])


@dataclass(frozen=True)
class Memory:
    """RSS and PSS summed over a set of processes; `count` of them."""

    rss: int
    pss: int
    count: int

    @classmethod
    def of(cls, processes: list[psutil.Process]) -> Memory:
        infos = [process.memory_full_info() for process in processes]
        return cls(sum(info.rss for info in infos), sum(info.pss for info in infos), len(infos))


@dataclass
class SideResult:
    name: str
    setup_seconds: float
    empty: Memory
    idle: Memory
    monitors: Memory
    peak_rss: int
    latencies: dict[str, Latency] = field(default_factory=dict)


# -- measuring ----------------------------------------------------------------------------


def timed(call: Callable[[], object], sampling: Sampling) -> Latency:
    for _ in range(sampling.warmup):
        call()
    seconds = []
    for _ in range(sampling.calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return Latency.of(seconds)


def measure_calls(kubelet: Kubelet, density: Density, sampling: Sampling) -> dict[str, Latency]:
    runtime = kubelet.runtime
    containers = kubelet.running_containers()
    if len(containers) != density.containers:
        raise RuntimeError(f"{len(containers)} containers run, expected {density.containers}")
    target = containers[len(containers) // 2].id

    def list_containers() -> int:
        return len(runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=RPC_TIMEOUT).containers)

    def list_pods() -> int:
        return len(runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items)

    def container_status() -> None:
        runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=target), timeout=RPC_TIMEOUT)

    def relist() -> None:
        list_pods()
        list_containers()

    if (list_pods(), list_containers()) != (density.pods, density.containers):
        raise RuntimeError("the runtime lists other pods or containers than this benchmark made")
    return {
        "ListContainers": timed(list_containers, sampling),
        "ContainerStatus": timed(container_status, sampling),
        "relist": timed(relist, sampling),
        "ListPodSandbox": timed(list_pods, sampling),
    }


def daemon_tree(pid: int) -> list[psutil.Process]:
    """The daemon and its children, without container monitors (a subreaper may adopt them)."""
    daemon = psutil.Process(pid)
    return [daemon, *(child for child in daemon.children(recursive=True) if child.name() not in MONITOR_NAMES)]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def measure_side(
    name: str,
    kubelet: Kubelet,
    pid: int,
    monitors: Callable[[], list[psutil.Process]],
    image: str,
    density: Density,
    sampling: Sampling,
) -> SideResult:
    image_ref = kubelet.pull(image)
    empty = Memory.of(daemon_tree(pid))
    print(f"{name}: making {density.pods} pods, {density.containers} containers", flush=True)
    started = time.perf_counter()
    kubelet.populate(density, image_ref)
    setup_seconds = time.perf_counter() - started
    time.sleep(sampling.settle_seconds)
    idle = Memory.of(daemon_tree(pid))
    monitor_memory = Memory.of(monitors())
    print(f"{name}: {setup_seconds:.1f} s to make them; timing {sampling.calls} calls of each kind", flush=True)
    latencies = measure_calls(kubelet, density, sampling)
    return SideResult(name, setup_seconds, empty, idle, monitor_memory, peak_rss(pid), latencies)


# -- the two runtimes ----------------------------------------------------------------------


def run_pycri(images: TestImages, density: Density, sampling: Sampling) -> SideResult:
    settings = {"log_level": "info", "runtime": {"pause_image": images.pause.reference}}
    with running_node(settings) as node, node.daemon.channel() as channel:
        assert node.daemon.proc is not None
        kubelet = Kubelet(channel, node.base / "logs")
        print(f"pycri: pod network {node.network.subnet} on bridge {node.network.bridge}, dirs under {node.base}")
        try:
            return measure_side(
                "pycri",
                kubelet,
                node.daemon.proc.pid,
                lambda: conmons(node),
                images.busybox.reference,
                density,
                sampling,
            )
        finally:
            kubelet.remove_all()
            for sandbox_id in kubelet.pods:
                remove_pod_cgroup(sandbox_id)
            report_leftovers("pycri", pycri_leftovers(node, kubelet.pods))


def conmons(node: Node) -> list[psutil.Process]:
    """The conmon processes of this node's daemon (their exit dir is under its state dir)."""
    base = str(node.base)
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "conmon" and any(base in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def pycri_leftovers(node: Node, pods: list[str]) -> list[str]:
    """What the node still has on the host once its pods are gone, one line each."""
    found = [f"conmon pid {process.pid}" for process in conmons(node)]
    found += [f"mount {point}" for point in mounts_under(node.base)]
    found += [f"nat rule {line}" for line in nat_rules_in(node.network.subnet)]
    found += [f"pod address {address}" for address in node.network.ip_files()]
    found += [f"cgroup {path}" for sandbox_id in pods for path in sorted(cgroup_dirs(pod_cgroup(sandbox_id)))]
    return found


def run_containerd(images: TestImages, density: Density, sampling: Sampling) -> SideResult:
    with host_network_state():
        containerd = IsolatedContainerd(images.registry_host, images.pause.reference)
        try:
            containerd.start()
            print(f"containerd: pod network {SUBNET} on bridge {BRIDGE}, dirs under {containerd.base}")
            with containerd.channel() as channel:
                kubelet = Kubelet(channel, containerd.base / "logs")
                try:
                    kubelet.pull(images.pause.reference)
                    return measure_side(
                        f"containerd {containerd_version()}",
                        kubelet,
                        containerd.pid,
                        containerd.shims,
                        images.busybox.reference,
                        density,
                        sampling,
                    )
                finally:
                    kubelet.remove_all()
                    wait_for(lambda: not containerd.shims(), SHIM_EXIT_SECONDS)
                    report_leftovers("containerd", containerd.leftovers())
        finally:
            report_leftovers("containerd (after it stopped)", containerd.stop())


def wait_for(done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)


def report_leftovers(name: str, found: list[str]) -> None:
    if found:
        print(f"WARNING: {name} left behind after removing its pods:", *found, sep="\n  ", file=sys.stderr)


@contextlib.contextmanager
def test_images() -> Iterator[TestImages]:
    workdir = short_tempdir("bench-registry-")
    try:
        with LocalRegistry(workdir) as registry:
            yield build_test_images(registry.url)
    finally:
        remove_tree(workdir)


# -- report -------------------------------------------------------------------------------


def milliseconds(latency: Latency) -> str:
    return f"{latency.median * 1000:8.2f} / {latency.p90 * 1000:8.2f}"


def megabytes(size: int) -> str:
    return f"{size / MB:8.1f}"


def ratio(pycri: float, reference: float | None) -> str:
    return f"{pycri / reference:6.2f}x" if reference else "     -"


def report(density: Density, sampling: Sampling, pycri: SideResult | None, reference: SideResult | None) -> None:
    sides = [side for side in (pycri, reference) if side is not None]
    print()
    print(
        f"{density.pods} pods x {density.containers_per_pod} containers ({density.containers} running), "
        f"{sampling.calls} calls each after {sampling.warmup} warm-up, one at a time"
    )
    header = "".join(f"{side.name:>26}" for side in sides)
    print(f"{'latency ms (median / p90)':<34}{header}   pycri/ref (median)")
    for call in ("ListContainers", "ContainerStatus", "relist", "ListPodSandbox"):
        cells = "".join(f"{milliseconds(side.latencies[call]):>26}" for side in sides)
        reference_median = reference.latencies[call].median if reference else None
        pycri_cell = ratio(pycri.latencies[call].median, reference_median) if pycri else ""
        print(f"{call:<34}{cells}   {pycri_cell}")
    print(f"{'memory MB':<34}{header}   pycri/ref")
    rows: list[tuple[str, Callable[[SideResult], int]]] = [
        ("daemon RSS idle at density", lambda side: side.idle.rss),
        ("daemon PSS idle at density", lambda side: side.idle.pss),
        ("daemon RSS idle, no pods", lambda side: side.empty.rss),
        ("daemon peak RSS (VmHWM)", lambda side: side.peak_rss),
        ("monitors RSS (conmon / shims)", lambda side: side.monitors.rss),
        ("monitors PSS (conmon / shims)", lambda side: side.monitors.pss),
    ]
    for label, value in rows:
        cells = "".join(f"{megabytes(value(side)):>26}" for side in sides)
        pycri_cell = ratio(value(pycri), value(reference) if reference else None) if pycri else ""
        print(f"{label:<34}{cells}   {pycri_cell}")
    print("monitor processes: " + ", ".join(f"{side.name} {side.monitors.count}" for side in sides))
    print("time to make the pods: " + ", ".join(f"{side.name} {side.setup_seconds:.1f} s" for side in sides))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--containers-per-pod", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls of each kind before the timed ones")
    parser.add_argument("--parallel", type=int, default=4, help="pods made at a time")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds at density before measuring")
    parser.add_argument("--runtime", choices=("both", "pycri", "containerd"), default="both")
    args = parser.parse_args()
    if args.pods < 1 or args.containers_per_pod < 1 or args.calls < 2 or args.parallel < 1:
        parser.error("--pods, --containers-per-pod and --parallel must be at least 1, --calls at least 2")
    density = Density(args.pods, args.containers_per_pod, args.parallel)
    sampling = Sampling(args.calls, args.warmup, args.settle)
    with_reference = args.runtime in ("both", "containerd")
    if with_reference and not containerd_available():
        print("containerd is not installed (apt-get install containerd): no reference figures", file=sys.stderr)
        with_reference = False
    with test_images() as images:
        reference = run_containerd(images, density, sampling) if with_reference else None
        pycri = run_pycri(images, density, sampling) if args.runtime != "containerd" else None
    report(density, sampling, pycri, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())

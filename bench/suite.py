"""The benchmark suite: every scenario against pycri and, in the same run, against a peer CRI runtime.

Run as root from the repository: `.venv/bin/python bench/suite.py [--quick] [--peer containerd|none|ENDPOINT]`.

The peer is by default an isolated containerd the suite starts itself (bench/peers.py) when its
binary is installed; `--peer unix:///path.sock` names any running CRI endpoint instead (its memory
is read when `--peer-pid` gives its daemon's pid; it must pull from the suite's registry, see
`--registry`). Scenarios run one side after the other (the first side alternates), never both at
once. The table (pycri, peer, ratio, target) is printed and written with the JSON of every figure
and the charts into `--out`. Everything made is removed at the end, on Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from images import BenchImages, bench_images  # noqa: E402
from peers import containerd_available  # noqa: E402
from report import draw_charts, growth_table, markdown_table, text_table  # noqa: E402
from results import Results, host_facts  # noqa: E402
from scenario_critest import critest_benchmarks  # noqa: E402
from scenario_density import FLAT_CALLS, DensityPlan, Step, density  # noqa: E402
from scenario_pull import FreshDaemon, fresh_containerd, fresh_pycri, pulls  # noqa: E402
from scenario_start import crictl_start, parallel_start, serial_start  # noqa: E402
from sides import Side, containerd_side, endpoint_side, pycri_side  # noqa: E402

from pycri.api import api_pb2, api_pb2_grpc  # noqa: E402

IDLE_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class Plan:
    serial_pods: int
    crictl_pods: int
    parallel_pods: tuple[int, ...]
    density: DensityPlan
    critest_samples: int  # 0: critest is not run
    critest_parallel: int
    pull_iterations: int
    pull_concurrent: int
    big_image_scale: float


FULL = Plan(
    serial_pods=20, crictl_pods=10, parallel_pods=(20, 50),
    density=DensityPlan(steps=(Step(10, 1), Step(20, 1), Step(100, 1), Step(100, 5)), memory_pods=(20, 100),
                        calls=200, warmup=10, budget_seconds=8.0, settle_seconds=5.0, parallel=4),
    critest_samples=30, critest_parallel=2, pull_iterations=3, pull_concurrent=3, big_image_scale=1.0,
)  # fmt: skip
QUICK = Plan(
    serial_pods=3, crictl_pods=2, parallel_pods=(4, 8),
    density=DensityPlan(steps=(Step(2, 1), Step(4, 1), Step(4, 2)), memory_pods=(2, 4),
                        calls=20, warmup=3, budget_seconds=2.0, settle_seconds=0.5, parallel=4),
    critest_samples=0, critest_parallel=1, pull_iterations=1, pull_concurrent=2, big_image_scale=0.03,
)  # fmt: skip


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def pods_left(side: Side) -> int:
    with side.channel() as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        return len(stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items)


class Suite:
    def __init__(self, plan: Plan, results: Results, images: BenchImages, sides: list[Side], progress: Progress,
                 out: Path) -> None:  # fmt: skip
        self.plan, self.results, self.images, self.sides, self.progress = plan, results, images, sides, progress
        self.out = out
        self.failures: list[str] = []
        self._turn = 0

    def each_side(self, name: str, scenario: Callable[[Side], object]) -> None:
        """Run `scenario` on every side, the first side alternating from one scenario to the next."""
        order = self.sides if self._turn % 2 == 0 else list(reversed(self.sides))
        self._turn += 1
        for side in order:
            self.progress(f"{name}: {side.name}")
            try:
                scenario(side)
            except Exception as error:  # noqa: BLE001 - one failed scenario does not end the run
                self.failures.append(f"{name} on {side.name}: {error}")
                traceback.print_exc()
                self.results.facts.setdefault("failures", []).append(self.failures[-1])
            left = pods_left(side)
            if left:
                print(f"WARNING: {side.name} still lists {left} pods after {name}", file=sys.stderr)
        self.results.write_json(self.out / "results.json")  # what an interrupted run measured stays

    def idle_memory(self) -> None:
        time.sleep(IDLE_SETTLE_SECONDS)
        for side in self.sides:
            side.version()
            memory = side.daemon_memory()
            if memory is None:
                self.results.skip(side.key, "memory.daemon.idle.pss", "daemon idle after start PSS", "MB",
                                  "the daemon's pid is unknown", 1.0)  # fmt: skip
            else:
                self.results.memory(side.key, "memory.daemon.idle", "daemon idle after start", memory, 1.0)

    def prepare(self) -> None:
        for side in self.sides:
            with side.channel() as channel:
                kubelet = side.kubelet(channel)
                kubelet.pull(self.images.busybox)
                if side.key == "peer":
                    kubelet.pull(self.images.pause)

    def run(self, fresh_daemons: dict[str, FreshDaemon]) -> None:
        plan, results, image = self.plan, self.results, self.images.busybox
        self.idle_memory()
        self.prepare()
        self.each_side("serial start", lambda side: serial_start(side, image, plan.serial_pods, results))
        self.each_side("crictl start", lambda side: crictl_start(side, image, plan.crictl_pods, results))
        for count in plan.parallel_pods:
            self.each_side(f"{count} pods in parallel", functools.partial(parallel_start, image=image, count=count,
                                                                           results=results))  # fmt: skip
        self.each_side("density", lambda side: density(side, image, plan.density, results, self.progress))
        if plan.critest_samples:
            self.each_side("critest -benchmark", self._critest)
        else:
            for side in self.sides:
                results.skip(side.key, "critest", "critest -benchmark", "ms", "not run in --quick mode")
        for key, fresh in fresh_daemons.items():
            self.progress(f"pull: {self.results.side_names[key]}")
            try:
                pulls(key, fresh, self.images, plan.pull_iterations, plan.pull_concurrent, results, self.progress)
            except Exception as error:  # noqa: BLE001
                self.failures.append(f"pull on {key}: {error}")
                traceback.print_exc()

    def _critest(self, side: Side) -> None:
        failed = critest_benchmarks(side, self.images, self.plan.critest_samples, self.plan.critest_parallel,
                                    self.results)  # fmt: skip
        for line in failed:
            print(f"WARNING: critest: {line}", file=sys.stderr)


def write_outputs(results: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results.write_json(out / "results.json")
    (out / "table.txt").write_text(text_table(results) + "\n\n" + growth_table(results, FLAT_CALLS) + "\n")
    (out / "table.md").write_text(markdown_table(results) + "\n\n" + growth_table(results, FLAT_CALLS, markdown=True)
                                  + "\n")  # fmt: skip
    charts = draw_charts(results, out)
    print(text_table(results), "", growth_table(results, FLAT_CALLS), "", sep="\n")
    print(f"written: {', '.join(str(path) for path in [out / 'results.json', out / 'table.md', *charts])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every scenario, under 2 minutes")
    parser.add_argument("--peer", default="containerd", help="containerd (default), none, or a CRI endpoint")
    parser.add_argument("--peer-pid", type=int, help="the pid of the daemon behind --peer ENDPOINT, for memory")
    parser.add_argument("--registry", help="push the images to this registry (http://HOST:PORT) instead of one's own")
    parser.add_argument("--out", type=Path, help="where the table, JSON and charts go (bench/results/<mode>)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("the suite runs pods: run it as root")
    plan, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    out = args.out or REPO / "bench" / "results" / mode
    # SIGTERM unwinds like Ctrl-C: every side removes its pods and stops its daemon.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    progress = Progress()
    results = Results(mode)
    results.facts.update(host_facts(), commit=git_commit(), plan=asdict(plan))
    facts = results.facts
    print(f"pycri bench suite, {mode} run, commit {facts['commit']}, "
          f"load average {facts['load_average_1_5_15']} on {facts['cpus']} cpus", flush=True)  # fmt: skip
    with contextlib.ExitStack() as stack:
        images = stack.enter_context(bench_images(plan.big_image_scale, args.registry))
        sides = [stack.enter_context(pycri_side(images.pause))]
        fresh: dict[str, FreshDaemon] = {"pycri": fresh_pycri}
        peer_note = add_peer(args, images, sides, fresh, stack)
        results.facts["peer"] = peer_note
        results.side_names.update({side.key: side.name for side in sides})
        results.side_names.setdefault("peer", "no peer")
        out.mkdir(parents=True, exist_ok=True)
        results.facts["complete"] = False
        suite = Suite(plan, results, images, sides, progress, out)
        suite.run(fresh)
        progress("done; removing what the run made")
    results.facts["complete"] = True
    results.facts["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results.facts["seconds"] = round(time.monotonic() - progress.started, 1)
    write_outputs(results, out)
    print(f"peer: {peer_note}")
    for failure in suite.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if any(" on pycri" in failure for failure in suite.failures) else 0


def add_peer(args: argparse.Namespace, images: BenchImages, sides: list[Side], fresh: dict[str, FreshDaemon],
             stack: contextlib.ExitStack) -> str:  # fmt: skip
    """Start or join the peer; what the peer is, or why there is none."""
    if args.peer == "none":
        return "none (--peer none)"
    if args.peer == "containerd":
        if not containerd_available():
            return "none: containerd is not installed (apt-get install containerd)"
        side = stack.enter_context(containerd_side(images.registry_host, images.pause))
        sides.append(side)
        fresh["peer"] = fresh_containerd(images)
        return f"{side.name}, isolated, started by the suite"
    side = stack.enter_context(endpoint_side(args.peer, args.peer_pid))
    sides.append(side)
    return f"{args.peer} (not started by the suite: no cold pulls)"


if __name__ == "__main__":
    sys.exit(main())

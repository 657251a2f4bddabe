"""critest's own benchmarks (`critest -benchmark`, from cri-tools) against each side.

critest times each CRI call of its container, pod and image lifecycles (`samples` cycles,
`parallel` at a time) and one pod + container start from scratch. Its images come from the
suite's registry through `-registry-prefix` (images.CRITEST_REPOSITORIES). The figures are the
median of each operation as critest measured it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from images import CRITEST_REPOSITORIES, BenchImages
from measure import Latency
from peers import cgroup_dirs, remove_cgroup_tree
from pull import loopback_env
from results import Results
from sides import Side

CRITEST = "critest"
# critest's pods ask for this cgroup parent from a runtime that does not answer RuntimeConfig.
CRITEST_CGROUP = "test.slice"
TIMEOUT_SECONDS = 1200


def params(images: BenchImages, samples: int, parallel: int) -> str:
    pull_image = images.critest_image(CRITEST_REPOSITORIES[1])
    return (
        f"containersNumber: {samples}\ncontainersNumberParallel: {parallel}\ncontainerBenchmarkTimeoutSeconds: 60\n"
        f"podsNumber: {samples}\npodsNumberParallel: {parallel}\n"
        f"imagesNumber: {samples}\nimagesNumberParallel: 1\nimageBenchmarkTimeoutSeconds: 60\n"
        "podContainerStartBenchmarkTimeoutSeconds: 20\n"
        f"imagePullingBenchmarkImage: {pull_image}\nimageListingBenchmarkImages: [{pull_image}]\n"
    )


def run_critest(side: Side, images: BenchImages, samples: int, parallel: int) -> Path:
    out = side.base / "critest"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "params.yaml").write_text(params(images, samples, parallel))
    test_image = images.critest_image(CRITEST_REPOSITORIES[0])
    (out / "images.yaml").write_text(f"defaultTestContainerImage: {test_image}\nwebServerTestImage: {test_image}\n")
    command = [
        CRITEST, "-benchmark", "-runtime-endpoint", side.endpoint, "-image-endpoint", side.endpoint,
        "-registry-prefix", images.registry_host, "-test-images-file", str(out / "images.yaml"),
        "-benchmarking-params-file", str(out / "params.yaml"), "-benchmarking-output-dir", str(out),
        "-ginkgo.no-color", f"-ginkgo.json-report={out / 'report.json'}",
    ]  # fmt: skip
    cgroups_before = cgroup_dirs(CRITEST_CGROUP)
    try:
        with (out / "console.log").open("wb") as console:
            subprocess.run(command, cwd=out, stdout=console, stderr=subprocess.STDOUT, env=loopback_env(),
                           timeout=TIMEOUT_SECONDS, check=False)  # fmt: skip
    finally:
        for directory in cgroup_dirs(CRITEST_CGROUP) - cgroups_before:
            remove_cgroup_tree(directory)
    return out


def lifecycle_latencies(out: Path) -> dict[str, Latency]:
    """`<group>/<operation>` -> latency, from critest's *_benchmark_data.json files."""
    found = {}
    for path in sorted(out.glob("*_benchmark_data.json")):
        data = json.loads(path.read_text())
        group = path.name.removesuffix("_benchmark_data.json")
        points = data.get("datapoints") or []
        for index, name in enumerate(data.get("operationsNames") or []):
            seconds = [point["operationsDurationsNs"][index] / 1e9 for point in points
                       if len(point.get("operationsDurationsNs") or []) > index]  # fmt: skip
            if seconds:
                found[f"{group}/{name}"] = Latency.of(seconds)
    return found


def measured_durations(out: Path) -> dict[str, Latency]:
    """Durations critest reports as gmeasure entries in its Ginkgo JSON report."""
    report = out / "report.json"
    if not report.exists():
        return {}
    found = {}
    for suite in json.loads(report.read_text()):
        for spec in suite.get("SpecReports") or []:
            for entry in spec.get("ReportEntries") or []:
                experiment = _json_or_none((entry.get("Value") or {}).get("AsJSON"))
                for measurement in (experiment or {}).get("Measurements") or []:
                    if measurement.get("Type") == "Duration" and measurement.get("Durations"):
                        seconds = [value / 1e9 for value in measurement["Durations"]]
                        found[str(measurement.get("Name"))] = Latency.of(seconds)
    return found


def failed_specs(out: Path) -> list[str]:
    report = out / "report.json"
    if not report.exists():
        return ["critest wrote no report (see console.log)"]
    return [
        f"{spec.get('LeafNodeText')}: {spec.get('State')}"
        for suite in json.loads(report.read_text())
        for spec in suite.get("SpecReports") or []
        if spec.get("LeafNodeType") == "It" and spec.get("State") not in ("passed", "skipped")
    ]


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def critest_benchmarks(side: Side, images: BenchImages, samples: int, parallel: int, results: Results) -> list[str]:
    """Records critest's figures for `side`; returns what failed, one line each."""
    if shutil.which(CRITEST) is None:
        results.skip(side.key, "critest", "critest -benchmark", "ms", "critest is not installed")
        return []
    out = run_critest(side, images, samples, parallel)
    latencies = {**lifecycle_latencies(out), **measured_durations(out)}
    for name, latency in latencies.items():
        results.latency(side.key, f"critest.{name}", f"critest {name} (n={latency.count})", latency)
    return [f"{side.name}: {line} (output in {out})" for line in failed_specs(out)]

"""Pod start: serial the way kubelet does it and with crictl, then many pods at once.

- serial: `pods` pods one after the other, one busybox container each (bench/kubelet.py's call
  sequence); figures are the whole pod start, each call, CreateContainer + StartContainer, and
  the calls of removing them again in kubelet's order.
- crictl: the same pods made by `crictl runp`, `crictl create` and `crictl start`, each a process
  of its own as an operator or a script would run them.
- parallel: `count` pods started at once (one thread each); figures are the wall time until the
  last container runs and the per-pod start time, then the wall time to remove them all at once.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from kubelet import POD_START, Kubelet, Pod
from measure import CallTimes, Latency
from pull import loopback_env
from results import Results
from sides import Side

from pycri.api import api_pb2

CRICTL = "crictl"
START_TARGET = 0.7
CALL_TARGETS = {"StopPodSandbox": 1.0, "RemoveContainer": 1.0}
CREATE_AND_START = "CreateContainer+StartContainer"


def serial_start(side: Side, image: str, pods: int, results: Results) -> None:
    times = CallTimes()
    with side.channel() as channel:
        kubelet = side.kubelet(channel, times)
        try:
            made = [kubelet.run_pod(f"serial-{index}", image, 1) for index in range(pods)]
            kubelet.remove_pods(made, parallel=1)
        finally:
            kubelet.remove_all()
    label = f"serial start of {pods} pods"
    results.latency(side.key, "start.serial.pod", f"{label}: pod + container", times.latency(POD_START), START_TARGET)
    for method in ("RunPodSandbox", "CreateContainer", "StartContainer"):
        results.latency(side.key, f"start.serial.{method}", f"{label}: {method}", times.latency(method))
    results.latency(
        side.key, "start.serial.create_and_start", f"{label}: {CREATE_AND_START}", create_and_start(times), 1.0
    )
    for method in ("StopContainer", "StopPodSandbox", "RemoveContainer", "RemovePodSandbox"):
        results.latency(
            side.key, f"remove.serial.{method}", f"removal of those pods: {method}", times.latency(method),
            CALL_TARGETS.get(method),
        )  # fmt: skip


def create_and_start(times: CallTimes) -> Latency | None:
    """CreateContainer and StartContainer of the same container added up (both are recorded in turn)."""
    creates, starts = times.seconds("CreateContainer"), times.seconds("StartContainer")
    if not creates or len(creates) != len(starts):
        return None
    return Latency.of([create + start for create, start in zip(creates, starts, strict=True)])


def crictl_start(side: Side, image: str, pods: int, results: Results) -> None:
    key, label = "start.crictl.pod", f"crictl: serial start of {pods} pods (runp + create + start)"
    if shutil.which(CRICTL) is None:
        results.skip(side.key, f"{key}.p50", f"{label} p50", "ms", "crictl is not installed", START_TARGET)
        return
    workdir = side.base / "crictl"
    workdir.mkdir(exist_ok=True)
    seconds = []
    with side.channel() as channel:
        kubelet = side.kubelet(channel)
        try:
            for index in range(pods):
                started = time.perf_counter()
                crictl_pod(side, kubelet, workdir, f"crictl-{index}", image)
                seconds.append(time.perf_counter() - started)
            kubelet.remove_pods(list(kubelet.pods.values()), parallel=1)
        finally:
            kubelet.remove_all()
    results.latency(side.key, key, label, Latency.of(seconds), START_TARGET)


def crictl_pod(side: Side, kubelet: Kubelet, workdir: Path, name: str, image: str) -> None:
    config = kubelet.pod_config(name)
    pod_file, container_file = workdir / f"{name}-pod.json", workdir / f"{name}-container.json"
    pod_file.write_text(json.dumps(crictl_pod_config(config)))
    sandbox_id = crictl(side, "runp", str(pod_file))
    pod = kubelet.pods[sandbox_id] = Pod(sandbox_id, config)
    container = kubelet.container_config(pod, "c0", image)
    (Path(config.log_directory) / "c0").mkdir()
    container_file.write_text(json.dumps(crictl_container_config(container)))
    container_id = crictl(side, "create", sandbox_id, str(container_file), str(pod_file))
    pod.containers.append(container_id)
    crictl(side, "start", container_id)


def crictl(side: Side, *arguments: str) -> str:
    command = [CRICTL, "--runtime-endpoint", side.endpoint, "--image-endpoint", side.endpoint, "--timeout", "60s"]
    done = subprocess.run([*command, *arguments], capture_output=True, text=True, env=loopback_env())
    if done.returncode != 0:
        raise RuntimeError(f"crictl {' '.join(arguments)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _namespace_options(config: api_pb2.PodSandboxConfig | api_pb2.ContainerConfig) -> dict[str, Any]:
    return {"namespace_options": {"pid": config.linux.security_context.namespace_options.pid}}


def crictl_pod_config(config: api_pb2.PodSandboxConfig) -> dict[str, Any]:
    """The pod as crictl's JSON (the CRI Go structs' field names; int64 as numbers)."""
    metadata = config.metadata
    return {
        "metadata": {"name": metadata.name, "namespace": metadata.namespace, "uid": metadata.uid, "attempt": 0},
        "hostname": config.hostname,
        "log_directory": config.log_directory,
        "dns_config": {
            "servers": list(config.dns_config.servers),
            "searches": list(config.dns_config.searches),
            "options": list(config.dns_config.options),
        },
        "labels": dict(config.labels),
        "annotations": dict(config.annotations),
        "linux": {"cgroup_parent": config.linux.cgroup_parent, "security_context": _namespace_options(config)},
    }


def crictl_container_config(config: api_pb2.ContainerConfig) -> dict[str, Any]:
    resources = config.linux.resources
    return {
        "metadata": {"name": config.metadata.name},
        "image": {"image": config.image.image},
        "command": list(config.command),
        # KeyValue.value is `bytes` in the CRI schema: Go's JSON carries it in base64.
        "envs": [{"key": env.key, "value": base64.b64encode(env.value).decode()} for env in config.envs],
        "labels": dict(config.labels),
        "annotations": dict(config.annotations),
        "log_path": config.log_path,
        "linux": {
            "resources": {
                "cpu_period": resources.cpu_period,
                "cpu_shares": resources.cpu_shares,
                "oom_score_adj": resources.oom_score_adj,
            },
            "security_context": _namespace_options(config),
        },
    }


def parallel_start(side: Side, image: str, count: int, results: Results) -> None:
    times = CallTimes()
    with side.channel() as channel:
        kubelet = side.kubelet(channel, times)
        try:
            started = time.perf_counter()
            made = kubelet.run_pods([f"parallel-{index}" for index in range(count)], image, 1, parallel=count)
            start_seconds = time.perf_counter() - started
            started = time.perf_counter()
            kubelet.remove_pods(made, parallel=count)
            remove_seconds = time.perf_counter() - started
        finally:
            kubelet.remove_all()
    label = f"{count} pods started in parallel"
    results.record(side.key, f"start.parallel{count}.wall", f"{label}: until all run", "s", start_seconds, START_TARGET)
    results.latency(side.key, f"start.parallel{count}.pod", f"{label}: pod + container", times.latency(POD_START))
    results.record(side.key, f"remove.parallel{count}.wall", f"{label}: removing them all at once", "s",
                   remove_seconds)  # fmt: skip

"""Timing and memory figures the benchmark scenarios share: latency percentiles, calls timed by
name from several threads, and RSS/PSS summed over a set of processes."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")
MB = 1_000_000


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values`, interpolated between the two nearest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * fraction
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    """Median and 99th percentile of a set of durations, in seconds."""

    p50: float
    p99: float
    count: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        return cls(percentile(seconds, 0.5), percentile(seconds, 0.99), len(seconds))


def time_calls(
    call: Callable[[], object], calls: int, warmup: int, budget_seconds: float = math.inf, at_least: int = 30
) -> list[float]:
    """`calls` durations of `call`, one at a time, after `warmup` untimed ones; fewer (but `at_least`)
    when they take more than `budget_seconds` in all."""
    for _ in range(warmup):
        call()
    seconds: list[float] = []
    deadline = time.perf_counter() + budget_seconds
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
        if started > deadline and len(seconds) >= at_least:
            break
    return seconds


class CallTimes:
    """Durations of named calls, recorded from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, list[float]] = defaultdict(list)

    def timed(self, name: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = call()
        self.add(name, time.perf_counter() - started)
        return result

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name].append(seconds)

    def seconds(self, name: str) -> list[float]:
        with self._lock:
            return list(self._seconds.get(name, ()))

    def latency(self, name: str) -> Latency | None:
        seconds = self.seconds(name)
        return Latency.of(seconds) if seconds else None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._seconds)


@dataclass(frozen=True)
class Memory:
    """RSS and PSS summed over `count` processes, in bytes."""

    rss: int
    pss: int
    count: int

    @classmethod
    def of(cls, processes: Iterable[psutil.Process]) -> Memory:
        rss = pss = count = 0
        for process in processes:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # gone between listing and reading
            rss, pss, count = rss + info.rss, pss + info.pss, count + 1
        return cls(rss, pss, count)

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss, self.count + other.count)


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def wait_for(done: Callable[[], bool], seconds: float, step: float = 0.2) -> bool:
    """Poll `done` until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True

"""What one suite run measured: figures per runtime, the series the charts draw, the run's facts.

A figure has a value per side ("pycri", "peer") or the reason a side has none. Its ratio is
pycri / peer; its target, where the issue sets one, is the highest ratio that meets it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from measure import MB, Latency, Memory

SIDES = ("pycri", "peer")


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    target: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        pycri, peer = self.values.get("pycri"), self.values.get("peer")
        if pycri is None or not peer:
            return None
        return pycri / peer

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None or self.target is None else ratio <= self.target


@dataclass(frozen=True)
class Point:
    """One step of a density ramp: a call's latency with `pods` pods holding `containers` containers."""

    pods: int
    containers: int
    p50_ms: float
    p99_ms: float


@dataclass
class Results:
    mode: str
    side_names: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    # call -> side -> points, for the charts of latency against density
    series: dict[str, dict[str, list[Point]]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def _figure(self, key: str, label: str, unit: str, target: float | None) -> Figure:
        figure = self.figures.get(key)
        if figure is None:
            figure = self.figures[key] = Figure(key, label, unit, target)
        return figure

    def record(self, side: str, key: str, label: str, unit: str, value: float, target: float | None = None) -> None:
        self._figure(key, label, unit, target).values[side] = value

    def skip(self, side: str, key: str, label: str, unit: str, why: str, target: float | None = None) -> None:
        self._figure(key, label, unit, target).skipped[side] = why

    def latency(self, side: str, key: str, label: str, latency: Latency | None, target: float | None = None) -> None:
        """p50 and p99 of a call as two figures, in ms; the target applies to the p50."""
        if latency is None:
            self.skip(side, f"{key}.p50", f"{label} p50", "ms", "no calls", target)
            return
        self.record(side, f"{key}.p50", f"{label} p50", "ms", latency.p50 * 1e3, target)
        self.record(side, f"{key}.p99", f"{label} p99", "ms", latency.p99 * 1e3)

    def memory(self, side: str, key: str, label: str, memory: Memory, target: float | None = None) -> None:
        """RSS and PSS as two figures, in MB; the target applies to the PSS."""
        self.record(side, f"{key}.rss", f"{label} RSS", "MB", memory.rss / MB)
        self.record(side, f"{key}.pss", f"{label} PSS", "MB", memory.pss / MB, target)

    def point(self, side: str, call: str, point: Point) -> None:
        self.series.setdefault(call, {}).setdefault(side, []).append(point)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "sides": self.side_names,
            "facts": self.facts,
            "figures": [
                {**asdict(figure), "ratio": figure.ratio, "met": figure.met} for figure in self.figures.values()
            ],
            "series": {
                call: {side: [asdict(point) for point in points] for side, points in by_side.items()}
                for call, by_side in self.series.items()
            },
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


def host_facts() -> dict[str, Any]:
    """The machine and its load when the run starts: figures from a loaded host are noisy."""
    load = os.getloadavg()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(value, 2) for value in load],
    }

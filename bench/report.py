"""The suite's output: one table (pycri, peer, ratio per figure), as text or Markdown, and charts of
latency against density (matplotlib, PNG and SVG)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from results import Figure, Results

# The calls drawn, one panel each, in this order.
CHART_CALLS = (
    "ListPodSandbox",
    "ListContainers",
    "relist",
    "ListContainerStats",
    "ListPodSandboxStats",
    "ContainerStatus",
    "PodSandboxStatus",
    "ContainerStats",
    "ListContainers (one pod)",
)
SIDE_STYLES = {"pycri": ("tab:blue", "o"), "peer": ("tab:orange", "s")}


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(figure: Figure) -> str:
    if figure.target is None:
        return ""
    met = figure.met
    return f"<= {figure.target:g}x " + ("-" if met is None else "met" if met else "NOT MET")


def _rows(results: Results) -> Iterator[tuple[str, str, str, str, str]]:
    for figure in results.figures.values():
        cells = []
        for side in ("pycri", "peer"):
            value = figure.values.get(side)
            cells.append(number(value) if value is not None or side not in figure.skipped else "skipped")
        ratio = figure.ratio
        yield (
            f"{figure.label} ({figure.unit})",
            cells[0],
            cells[1],
            f"{ratio:.2f}x" if ratio is not None else "-",
            verdict(figure),
        )


def text_table(results: Results) -> str:
    peer = results.side_names.get("peer", "no peer")
    header = ("figure", results.side_names.get("pycri", "pycri"), peer, "pycri/peer", "target")
    rows = [header, *_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in
                  enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + _skip_notes(results))


def markdown_table(results: Results) -> str:
    header = ("figure", results.side_names.get("pycri", "pycri"), results.side_names.get("peer", "no peer"))
    lines = [
        "| " + " | ".join((*header, "pycri / peer", "target")) + " |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines + _skip_notes(results))


def _skip_notes(results: Results) -> list[str]:
    reasons = sorted({f"{side}: {why}" for figure in results.figures.values() for side, why in figure.skipped.items()})
    return ["", *(f"skipped, {reason}" for reason in reasons)] if reasons else []


def growth_table(results: Results, calls: tuple[str, ...], markdown: bool = False) -> str:
    """p50 ms of calls whose answer does not grow, at each density step, and the last step over the first."""
    rows: list[list[str]] = []
    steps: list[str] = []
    for call in calls:
        for side, points in sorted(results.series.get(call, {}).items()):
            steps = steps or [f"{point.containers} containers" for point in points]
            growth = points[-1].p50_ms / points[0].p50_ms if points and points[0].p50_ms else None
            name = results.side_names.get(side, side)
            rows.append([call, name, *(number(point.p50_ms) for point in points), number(growth) + "x"])
    if not rows:
        return ""
    header = ["call (p50 ms)", "runtime", *steps, "last / first"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     for row in [header, *rows])  # fmt: skip


def draw_charts(results: Results, directory: Path) -> list[Path]:
    """One figure with a panel per call: p50 (solid) and p99 (dotted) against containers running."""
    calls = [call for call in CHART_CALLS if call in results.series]
    if not calls:
        return []
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "pycri-bench-matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(calls) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, call in zip(axes.flat, calls, strict=False):
        for side, points in sorted(results.series[call].items()):
            color, marker = SIDE_STYLES.get(side, ("tab:gray", "x"))
            name = results.side_names.get(side, side)
            xs = [point.containers for point in points]
            axis.plot(xs, [point.p50_ms for point in points], color=color, marker=marker, label=f"{name} p50")
            axis.plot(xs, [point.p99_ms for point in points], color=color, linestyle=":", label=f"{name} p99")
        points = next(iter(results.series[call].values()))
        axis.set_xscale("log")
        axis.minorticks_off()
        axis.set_xticks([point.containers for point in points])
        axis.set_xticklabels([f"{point.containers}\n({point.pods} pods)" for point in points], fontsize=7)
        axis.set_title(call, fontsize=10)
        axis.set_ylabel("ms")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(calls) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"CRI call latency against running containers ({results.mode} run)", fontsize=11)
    figure.tight_layout()
    written = []
    for suffix in ("png", "svg"):
        path = directory / f"latency.{suffix}"
        figure.savefig(path, dpi=80 if suffix == "png" else None)
        written.append(path)
    plt.close(figure)
    return written

"""Two suite runs side by side: `.venv/bin/python bench/compare.py BEFORE/results.json AFTER/results.json`.

Prints a Markdown table of every figure with a target (or every p50 and memory figure with
`--all`): pycri and the peer in each run and the ratio pycri / peer in each, with the target and
whether the later run meets it. Ratios come from one run each: the two runs' load may differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from report import number


def figures(path: Path) -> dict[str, dict[str, Any]]:
    return {figure["key"]: figure for figure in json.loads(path.read_text())["figures"]}


def ratio_cell(figure: dict[str, Any] | None) -> str:
    ratio = figure and figure.get("ratio")
    return f"{ratio:.2f}x" if ratio is not None else "-"


def value_cell(figure: dict[str, Any] | None, side: str) -> str:
    return number((figure or {}).get("values", {}).get(side))


def wanted(figure: dict[str, Any], every: bool) -> bool:
    if figure.get("target") is not None:
        return True
    return every and not figure["key"].endswith((".p99", ".rss"))


def comparison(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], every: bool) -> str:
    lines = [
        "| figure | pycri before | pycri after | peer (after run) | ratio before | ratio after | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, figure in after.items():
        if not wanted(figure, every):
            continue
        old = before.get(key)
        target = figure.get("target")
        met = {True: "met", False: "NOT MET", None: "-"}[figure["met"]]
        verdict = "" if target is None else f"<= {target:g}x {met}"
        lines.append(
            f"| {figure['label']} ({figure['unit']}) | {value_cell(old, 'pycri')} | {value_cell(figure, 'pycri')} "
            f"| {value_cell(figure, 'peer')} | {ratio_cell(old)} | {ratio_cell(figure)} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--all", action="store_true", help="every p50 and memory figure, not only those with targets")
    args = parser.parse_args()
    print(comparison(figures(args.before), figures(args.after), args.all))
    return 0


if __name__ == "__main__":
    sys.exit(main())

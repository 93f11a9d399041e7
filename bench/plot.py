"""Freshness curves from a ``bench.audiences`` results file.

Left: freshness p99 (solid) and p50 (dashed) against stored events, one line per audience
count, at the lowest pixel rate measured. Right: p99 against pixel rate, one line per (stored
events, audiences) measured at more than one rate (every point, unjoined, if none was). A cross
marks a point where the segmenter inserted less than the load offered: its freshness grows with
the length of the run.

    python -m bench.plot bench/results/audiences-<time>.json   # writes audiences-<time>.png

Needs matplotlib (``pip install -e '.[bench]'``); drawn with the Agg backend (no display).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib as mpl
import orjson

mpl.use("Agg")  # before pyplot is imported: no display needed

import matplotlib.pyplot as plt


def _ok(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def plot_results(path: Path, out: Path | None = None) -> Path:
    """Draw the matrix of a results JSON; return the PNG written (beside it by default)."""
    data = orjson.loads(path.read_bytes())
    matrix: list[dict[str, Any]] = [m for m in data.get("matrix", []) if _ok(m.get("p99_s"))]
    out = out or path.with_suffix(".png")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    base_rate = min((m["rate"] for m in matrix), default=0)
    by_audiences: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in matrix:
        if m["rate"] == base_rate:
            by_audiences[m["audiences"]].append(m)
    for n, points in sorted(by_audiences.items()):
        points.sort(key=lambda m: m["history"])
        xs = [m["history"] / 1e6 for m in points]
        line = left.plot(xs, [m["p99_s"] for m in points], "o-", label=f"{n} audiences p99")[0]
        left.plot(
            xs,
            [m["p50_s"] for m in points],
            "s--",
            color=line.get_color(),
            alpha=0.7,
            label=f"{n} audiences p50",
        )
    behind = [m for m in matrix if m["rate"] == base_rate and m.get("keeps_up") is False]
    if behind:
        left.plot(
            [m["history"] / 1e6 for m in behind],
            [m["p99_s"] for m in behind],
            "kx",
            markersize=10,
            label="segmenter fell behind the load",
        )
    left.set_title(f"freshness vs stored events ({base_rate:,.0f} pixels/s)")
    left.set_xlabel("stored events (millions)")
    left.set_ylabel("probe pixel -> enter on the change topic (s)")
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    by_point: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for m in matrix:
        by_point[(m["history"], m["audiences"])].append(m)
    # Lines for the points measured at several rates; every point only if none was.
    series = {k: v for k, v in by_point.items() if len(v) > 1} or by_point
    for (history, n), points in sorted(series.items()):
        points.sort(key=lambda m: m["rate"])
        right.plot(
            [m["rate"] for m in points],
            [m["p99_s"] for m in points],
            "o-" if len(points) > 1 else "o",
            label=f"{history / 1e6:g}M stored, {n} audiences",
        )
    right.set_title("freshness p99 vs pixel rate")
    right.set_xlabel("steady load (pixels/s)")
    right.set_ylabel("p99 (s)")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    if series:
        right.legend(fontsize=8)
    fig.suptitle(f"Leadback audience freshness — {data.get('cpu_model', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("results", type=Path, help="bench/results/audiences-<time>.json")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: beside it)")
    args = parser.parse_args()
    print(plot_results(args.results, args.out))


if __name__ == "__main__":
    main()

"""What the study scripts share: reading ``ncguide compare`` output folders and writing markdown tables.

A cell is ``median [min–max]`` over seeds: the range is left out when min = max, and a cell with no
value reads ``—``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from ncguide.experiments.files import read_jsonl

__all__ = ["cell", "median_range", "reached", "table_head", "method_runs", "first_epoch", "mean_last"]


def cell(median: float, lo: float, hi: float, spec: str = "{:.1f}") -> str:
    """``median [lo–hi]`` (just ``median`` when ``lo == hi``)."""
    text = spec.format(median)
    return text if lo == hi else f"{text} [{spec.format(lo)}–{spec.format(hi)}]"


def median_range(values: Iterable[float | None], spec: str = "{:.1f}", scale: float = 1.0) -> str:
    """The cell of ``values`` times ``scale``, ``None`` and NaN left out."""
    v = [x * scale for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return cell(statistics.median(v), min(v), max(v), spec) if v else "—"


def reached(epochs: list[int | None]) -> str:
    """Epochs to a threshold over seeds (``None``: not reached), with ``(r/n reached)`` unless all did."""
    miss = sum(e is None for e in epochs)
    return median_range(epochs, "{:.0f}") + (f" ({len(epochs) - miss}/{len(epochs)} reached)" if miss else "")


def table_head(columns: list[str], align: str) -> str:
    """The two header lines of a markdown table; ``align`` has one ``l`` or ``r`` per column."""
    return "| " + " | ".join(columns) + " |\n|" + "".join("---:|" if a == "r" else "---|" for a in align)


def method_runs(compare_dir: Path) -> dict[str, list[list[dict]]]:
    """``{method: [the metrics.jsonl records of each seed]}`` of a compare folder (seeds with records)."""
    out = {}
    for m in sorted((compare_dir / "runs").iterdir()):
        runs = [r for r in (read_jsonl(p) for p in sorted(m.glob("seed-*/metrics.jsonl"))) if r]
        if runs:
            out[m.name] = runs
    return out


def first_epoch(records: list[dict], key: str, threshold: float, below: bool = False) -> int | None:
    """The first evaluated epoch with ``key >= threshold`` (``<=`` when ``below``), or ``None``."""
    return next((r["epoch"] for r in records if (r[key] <= threshold if below else r[key] >= threshold)), None)


def mean_last(records: list[dict], key: str, n: int = 5) -> float:
    """The mean of ``key`` over the last ``n`` evaluations (less sensitive to one late spike)."""
    return statistics.mean(r[key] for r in records[-n:])

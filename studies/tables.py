"""What the study scripts share: reading ``ncguide compare`` output folders and writing markdown tables.

A cell is ``median [min–max]`` over seeds: the range is left out when min = max, and a cell with no
value reads ``—``.

The committed results of a study are compare folders ``studies/results/<study>/<setting>/`` holding
``summary.json`` and ``config.yaml`` (the run logs are not committed). :func:`read_studies` reads them and says
which are partial: a folder whose ``README.md`` calls it partial, or with fewer finished runs than its
``config.yaml`` asks for (methods × seeds), is not a result.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ncguide.experiments.files import read_jsonl
from ncguide.experiments.verdict import build_verdict

__all__ = ["cell", "median_range", "reached", "table_head", "method_runs", "first_epoch", "mean_last", "Study",
           "read_study", "read_studies", "partial_reason", "per_seed", "first_hit_verdict", "PAPER_BASELINES"]

PAPER_BASELINES = ("standard", "fixed-etf")  # the paper's baselines, against which older studies are judged


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


# ----------------------------------------------------------------------------------------------------
# committed summaries


@dataclass
class Study:
    """One committed compare folder: ``summary.json``, ``config.yaml`` (``{}`` when absent) and, when the folder
    is not a complete result, why (``partial``; None when complete)."""

    path: Path
    summary: dict
    config: dict
    partial: str | None

    @property
    def name(self) -> str:
        return self.path.name


def read_study(path: Path) -> Study:
    """The compare folder ``path`` (it must hold ``summary.json``)."""
    import yaml

    summary = json.loads((path / "summary.json").read_text())
    config_path = path / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    return Study(path, summary, config, partial_reason(path, summary, config))


def read_studies(root: Path) -> list[Study]:
    """Every compare folder directly under ``root`` (sorted by name); none when ``root`` does not exist."""
    return [read_study(p.parent) for p in sorted(Path(root).glob("*/summary.json"))]


def partial_reason(path: Path, summary: dict, config: dict) -> str | None:
    """Why the folder is not a complete result, or None: its ``README.md`` says *partial*, runs of
    ``config.yaml``'s methods × seeds did not finish (left out of the summary), or runs were left out as
    incomplete (``summary.json``'s ``excluded``)."""
    why = []
    readme = path / "README.md"
    if readme.is_file() and re.search(r"\bpartial\b", readme.read_text(), re.IGNORECASE):
        why.append("its README.md says it is partial")
    done = summary.get("methods", {})
    methods = config.get("methods") or list(done)
    seeds = config.get("seeds")
    n_seeds = len(seeds) if isinstance(seeds, list) else seeds if isinstance(seeds, int) else None
    finished = sum(len(done.get(m, {}).get("seeds", [])) for m in methods)
    if n_seeds is not None and finished < len(methods) * n_seeds:
        why.append(f"{finished} of {len(methods) * n_seeds} runs finished")
    elif summary.get("excluded"):
        why.append(f"{len(summary['excluded'])} runs left out as incomplete")
    missing = [f"`{m}`" for m in methods if not done.get(m, {}).get("seeds")]
    if missing:
        why.append(f"no run of {', '.join(missing)} finished")
    return "; ".join(why) or None


def per_seed(stats: dict) -> list[float]:
    """The ``per_seed`` epochs of a ``reach``/``sustained`` entry's ``epoch``, ``None`` (never) as ``inf``."""
    return [math.inf if e is None else float(e) for e in stats["per_seed"]]


def first_hit_verdict(summary: dict, focus: str = "nearest-etf", baselines: Sequence[str] = PAPER_BASELINES
                      ) -> dict | None:
    """The verdict of ``focus`` against the faster of ``baselines`` on the *first-hit* epochs of an older
    ``summary.json`` (one without ``sustained`` epochs or a ``verdict``): :func:`ncguide.experiments.verdict.
    build_verdict` on each seed's first evaluated epoch at the training-accuracy threshold, its ``"metric"`` set
    to ``"first"``. Such summaries hold no per-seed test accuracy, so the verdict's ``test_acc`` says why it is
    not compared. None when ``focus`` or every baseline is missing, or the summary has no per-seed epochs."""
    methods = summary.get("methods", {})
    chosen = [m for m in (focus, *baselines) if m in methods]
    if focus not in methods or len(chosen) < 2:
        return None
    data = {}
    for m in chosen:
        epochs = methods[m]["reach"]["train_acc"]["epoch"]
        if "per_seed" not in epochs:
            return None
        seeds = methods[m]["seeds"]
        loss = (methods[m]["final"].get("train_loss") or {}).get("median", math.inf)
        data[m] = {"seeds": seeds, "sustained": per_seed(epochs), "test_acc": [None] * len(seeds),
                   "train_loss": [loss]}
    verdict = build_verdict(data, focus, summary["thresholds"]["train_acc"]["value"])
    if verdict is not None:
        verdict["metric"] = "first"
    return verdict

"""Per-method curve summaries from compare output dirs (``DIR/runs/<method>/seed-<s>/metrics.jsonl``).

    python benchmarks/curves.py DIR [DIR ...] [--epochs 10,20,30] [--label-from-dir]

For every DIR and method: median [min–max] over seeds of the final train/test accuracy and loss, the
test accuracy averaged over the last 5 evaluations (epochs 26-30 of 30; less sensitive to one late spike), the
best test accuracy over epochs, the test accuracy at selected epochs, and the number of "spikes"
(epochs whose train_loss is more than 2x the previous evaluation's and > 0.05).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from ncguide.experiments.files import read_jsonl


def fmt(values: list[float], scale: float = 1.0, spec: str = "{:.1f}") -> str:
    values = [v * scale for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    med = spec.format(statistics.median(values))
    if len(values) == 1 or min(values) == max(values):
        return med
    return f"{med} [{spec.format(min(values))}–{spec.format(max(values))}]"


def spikes(recs: list[dict]) -> int:
    n = 0
    for a, b in zip(recs[1:], recs[2:]):
        if b["train_loss"] > 2 * a["train_loss"] and b["train_loss"] > 0.05:
            n += 1
    return n


def summarize(root: Path, epochs: list[int]) -> list[str]:
    rows = []
    for mdir in sorted((root / "runs").iterdir()):
        runs = [read_jsonl(p) for p in sorted(mdir.glob("seed-*/metrics.jsonl"))]
        runs = [r for r in runs if r]
        if not runs:
            continue
        last = [r[-1] for r in runs]
        cells = [
            fmt([x["train_acc"] for x in last], 100),
            fmt([x["test_acc"] for x in last], 100),
            fmt([sum(y["test_acc"] for y in r[-5:]) / len(r[-5:]) for r in runs], 100),
            fmt([max(y["test_acc"] for y in r) for r in runs], 100),
            fmt([x["train_loss"] for x in last], 1, "{:.3f}"),
            fmt([x["test_loss"] for x in last], 1, "{:.2f}"),
            fmt([max(y["train_loss"] for y in r[len(r) // 2 :]) for r in runs], 1, "{:.3f}"),
            fmt([float(spikes(r)) for r in runs], 1, "{:.0f}"),
        ]
        for e in epochs:
            cells.append(fmt([next((y["test_acc"] for y in r if y["epoch"] == e), None) for r in runs], 100))
        rows.append(f"| {root.name} | `{mdir.name}` | {len(runs)} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--epochs", default="10,20")
    a = p.parse_args()
    epochs = [int(e) for e in a.epochs.split(",") if e]
    head = [
        "setting",
        "method",
        "seeds",
        "final train acc %",
        "final test acc %",
        "test acc % (mean of last 5 evals)",
        "best test acc %",
        "final train loss",
        "final test loss",
        "max train loss (2nd half)",
        "spikes",
    ]
    head += [f"test acc % @ep{e}" for e in epochs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(head) - 3))
    for d in a.dirs:
        print("\n".join(summarize(d, epochs)))


if __name__ == "__main__":
    main()

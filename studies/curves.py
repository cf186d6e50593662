"""Per-method curve summaries from compare output dirs (``DIR/runs/<method>/seed-<s>/metrics.jsonl``).

    python studies/curves.py DIR [DIR ...] [--epochs 10,20,30] [--label-from-dir]

For every DIR and method: median [min–max] over seeds of the final train/test accuracy and loss, the
test accuracy averaged over the last 5 evaluations (epochs 26-30 of 30; less sensitive to one late spike), the
best test accuracy over epochs, the test accuracy at selected epochs, and the number of "spikes"
(epochs whose train_loss is more than 2x the previous evaluation's and > 0.05).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tables import mean_last, median_range, method_runs, table_head


def spikes(recs: list[dict]) -> int:
    n = 0
    for a, b in zip(recs[1:], recs[2:]):
        if b["train_loss"] > 2 * a["train_loss"] and b["train_loss"] > 0.05:
            n += 1
    return n


def summarize(root: Path, epochs: list[int]) -> list[str]:
    rows = []
    for method, runs in method_runs(root).items():
        last = [r[-1] for r in runs]
        cells = [
            median_range([x["train_acc"] for x in last], scale=100),
            median_range([x["test_acc"] for x in last], scale=100),
            median_range([mean_last(r, "test_acc") for r in runs], scale=100),
            median_range([max(y["test_acc"] for y in r) for r in runs], scale=100),
            median_range([x["train_loss"] for x in last], "{:.3f}"),
            median_range([x["test_loss"] for x in last], "{:.2f}"),
            median_range([max(y["train_loss"] for y in r[len(r) // 2 :]) for r in runs], "{:.3f}"),
            median_range([float(spikes(r)) for r in runs], "{:.0f}"),
        ]
        for e in epochs:
            cells.append(median_range([next((y["test_acc"] for y in r if y["epoch"] == e), None) for r in runs],
                                      scale=100))
        rows.append(f"| {root.name} | `{method}` | {len(runs)} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--epochs", default="10,20")
    a = p.parse_args()
    epochs = [int(e) for e in a.epochs.split(",") if e]
    columns = ["setting", "method", "seeds", "final train acc %", "final test acc %",
               "test acc % (mean of last 5 evals)", "best test acc %", "final train loss", "final test loss",
               "max train loss (2nd half)", "spikes", *(f"test acc % @ep{e}" for e in epochs)]
    print(table_head(columns, "lll" + "r" * (len(columns) - 3)))
    for d in a.dirs:
        print("\n".join(summarize(d, epochs)))


if __name__ == "__main__":
    main()

"""Compact per-method table of `ncguide compare` output directories, read from the runs' metrics.jsonl.

    python studies/study_table.py DIR [DIR ...] [--threshold 0.99] [--nc1 0.1]

Cells are median [min–max] over seeds: first evaluated epoch with train_acc >= threshold and with
nc1 <= --nc1 ("(r/n reached)" when not every seed got there; the median is over those that did), final test
accuracy, test accuracy averaged over the last 5 evaluations (less sensitive to one late spike), final training
loss and accuracy, and the number of seeds whose training accuracy fell below 99% at an evaluation after
epoch 15 (late instability).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tables import first_epoch, mean_last, median_range, method_runs, reached, table_head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--nc1", type=float, default=0.1)
    a = p.parse_args()
    print(table_head(["setting", "method", "seeds", f"epochs to train acc ≥ {a.threshold:.0%}",
                      f"epochs to NC1 ≤ {a.nc1:g}", "final test acc %", "test acc %, mean of last 5 evals",
                      "final train loss", "final train acc %", "seeds with train acc < 99% after epoch 15"],
                     "llrllllllr"))
    for d in a.dirs:
        for method, rs in method_runs(d).items():
            n = len(rs)
            cells = [
                reached([first_epoch(r, "train_acc", a.threshold) for r in rs]),
                reached([first_epoch(r, "nc1", a.nc1, below=True) for r in rs]),
                median_range([r[-1]["test_acc"] for r in rs], scale=100),
                median_range([mean_last(r, "test_acc") for r in rs], scale=100),
                median_range([r[-1]["train_loss"] for r in rs], "{:.3f}"),
                median_range([r[-1]["train_acc"] for r in rs], scale=100),
                f"{sum(any(x['train_acc'] < 0.99 for x in r if x['epoch'] > 15) for r in rs)}/{n}",
            ]
            print(f"| {d.name} | `{method}` | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Compact per-method table of `ncguide compare` output directories, read from the runs' metrics.jsonl.

    python benchmarks/study_table.py DIR [DIR ...] [--threshold 0.99] [--nc1 0.1]

Cells are median [min–max] over seeds: first evaluated epoch with train_acc >= threshold and with
nc1 <= --nc1 ("(r/n reached)" when not every seed got there; the median is over those that did), final test
accuracy, test accuracy averaged over the last 5 evaluations (less sensitive to one late spike), final training
loss and accuracy, and the number of seeds whose training accuracy fell below 99% at an evaluation after
epoch 15 (late instability).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ncguide.experiments.files import read_jsonl


def fmt(v: list, spec: str) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "—"
    med = spec.format(statistics.median(v))
    return med if min(v) == max(v) else f"{med} [{spec.format(min(v))}–{spec.format(max(v))}]"


def first(r: list[dict], key: str, thr: float, below: bool = False):
    return next((x["epoch"] for x in r if (x[key] <= thr if below else x[key] >= thr)), None)


def reach(values: list, n: int) -> str:
    miss = sum(x is None for x in values)
    return fmt(values, "{:.0f}") + (f" ({n - miss}/{n} reached)" if miss else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--nc1", type=float, default=0.1)
    a = p.parse_args()
    print(
        f"| setting | method | seeds | epochs to train acc ≥ {a.threshold:.0%} | epochs to NC1 ≤ {a.nc1:g} | "
        "final test acc % | test acc %, mean of last 5 evals | final train loss | final train acc % | "
        "seeds with train acc < 99% after epoch 15 |"
    )
    print("|---|---|---:|---|---|---|---|---|---|---:|")
    for d in a.dirs:
        for m in sorted((d / "runs").iterdir()):
            rs = [r for r in (read_jsonl(q) for q in sorted(m.glob("seed-*/metrics.jsonl"))) if r]
            if not rs:
                continue
            n = len(rs)
            cells = [
                reach([first(r, "train_acc", a.threshold) for r in rs], n),
                reach([first(r, "nc1", a.nc1, below=True) for r in rs], n),
                fmt([100 * r[-1]["test_acc"] for r in rs], "{:.1f}"),
                fmt([100 * statistics.mean(x["test_acc"] for x in r[-5:]) for r in rs], "{:.1f}"),
                fmt([r[-1]["train_loss"] for r in rs], "{:.3f}"),
                fmt([100 * r[-1]["train_acc"] for r in rs], "{:.1f}"),
                f"{sum(any(x['train_acc'] < 0.99 for x in r if x['epoch'] > 15) for r in rs)}/{n}",
            ]
            print(f"| {d.name} | `{m.name}` | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

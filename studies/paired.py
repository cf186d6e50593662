"""Per-seed paired comparison of two methods in `ncguide compare` output directories.

    python studies/paired.py DIR [DIR ...] [--a nearest-etf] [--b nearest-etf-nograd] [--threshold 0.99]
    python studies/paired.py PROBE --a nearest-etf --b nearest-etf --b-root BASE   (same method, two dirs)

For each DIR and seed present for both methods: epochs to train_acc >= threshold, final test accuracy and the
mean test accuracy over the last 5 evaluations (less sensitive to a single late spike), for A, for B, and
A - B. Summary row: median [min–max] of the differences, and how many seeds have A better / equal / worse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ncguide.experiments.files import read_jsonl
from tables import first_epoch, mean_last, median_range, table_head


def stats(r: list[dict], thr: float) -> tuple[float, float, float]:
    ep = first_epoch(r, "train_acc", thr)
    return float("inf") if ep is None else ep, 100 * r[-1]["test_acc"], 100 * mean_last(r, "test_acc")


def signs(v: list[float], better_is_lower: bool) -> str:
    b = sum((x < 0) if better_is_lower else (x > 0) for x in v)
    e = sum(x == 0 for x in v)
    return f"{b}/{e}/{len(v) - b - e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--a", default="nearest-etf")
    p.add_argument("--b", default="nearest-etf-nograd")
    p.add_argument("--b-root", type=Path, help="read B's runs from this compare directory instead of each DIR")
    p.add_argument("--threshold", type=float, default=0.99)
    a = p.parse_args()
    print(
        f"A = `{a.a}`, B = `{a.b}`; differences A − B, median [min–max] over seeds; "
        "'better/equal/worse' counts seeds where A is better"
    )
    print()
    print(table_head(["setting", "seeds", f"Δ epochs to train acc ≥ {a.threshold:.0%}", "A better/eq/worse",
                     "Δ final test acc (pts)", "A better/eq/worse", "Δ test acc, mean of last 5 evals (pts)",
                     "A better/eq/worse"], "lrllllll"))
    for d in a.dirs:
        ra, rb = d / "runs" / a.a, (a.b_root or d) / "runs" / a.b
        seeds = sorted({q.name for q in ra.glob("seed-*")} & {q.name for q in rb.glob("seed-*")})
        diffs = [[], [], []]
        for s in seeds:
            sa = stats(read_jsonl(ra / s / "metrics.jsonl"), a.threshold)
            sb = stats(read_jsonl(rb / s / "metrics.jsonl"), a.threshold)
            for i in range(3):
                diffs[i].append(sa[i] - sb[i])
        if not seeds:
            continue
        print(
            f"| {d.name} | {len(seeds)} | {median_range(diffs[0], '{:+.0f}')} | {signs(diffs[0], True)} | "
            f"{median_range(diffs[1], '{:+.1f}')} | {signs(diffs[1], False)} | "
            f"{median_range(diffs[2], '{:+.1f}')} | {signs(diffs[2], False)} |"
        )


if __name__ == "__main__":
    main()

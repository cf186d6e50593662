"""The tuned study's tables, from the ``summary.json`` of each tuned compare under ROOT (``studies/tuned.sh``).

    python studies/tuned_table.py studies/results/tuned [--baselines standard,fixed-etf]

Per setting (its training-accuracy threshold in brackets) and method: the selected learning rate, epochs
and training seconds to the threshold (report seeds, ``median [min–max]``), the ratio of the median epochs
to the best tuned baseline's (the baseline with the fewest median epochs), the final test accuracy, and the
difference of its median to the best baseline's final test accuracy (in points). Then one line per setting:
does the nearest-ETF method meet the goal (≤ 0.7× the epochs, final test accuracy within 0.5 point)?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headline import reach_cell
from tables import median_range, table_head

GOAL_RATIO, GOAL_POINTS = 0.7, 0.5


def _median_epochs(m: dict) -> float:
    e = m["reach"]["train_acc"]["epoch"]["median"]
    return float("inf") if e is None else e


def _test(m: dict) -> float | None:
    return (m["final"].get("test_acc") or {}).get("median")


def setting_rows(name: str, summary: dict, baselines: list[str]) -> tuple[list[str], list[str]]:
    methods = summary["methods"]
    present = [b for b in baselines if b in methods]
    best = min(present, key=lambda b: _median_epochs(methods[b])) if present else None
    best_test = max((_test(methods[b]) for b in present if _test(methods[b]) is not None), default=None)
    rows, verdicts = [], []
    for method, m in methods.items():
        lr = (summary.get("selected", {}).get(method) or {}).get("lr", "—")
        reach = m["reach"]["train_acc"]
        ratio = "—"
        if best is not None and method != best:
            r = _median_epochs(m) / _median_epochs(methods[best])
            ratio = f"{r:.2f}" if r == r and r != float("inf") else "—"
        test = _test(m)
        diff = "—" if test is None or best_test is None else f"{100 * (test - best_test):+.1f}"
        st = m["final"].get("test_acc")
        test_cell = "—" if test is None else median_range([st["median"], st["min"], st["max"]], "{:.1f}", 100)
        acc = summary["thresholds"]["train_acc"]["value"]
        rows.append(f"| {name} ({100 * acc:g}%) | `{method}` | {lr} | {reach_cell(reach)} | "
                    f"{reach_cell(reach, 'wall_s', '{:.3g}')} | {ratio} | {test_cell} | {diff} |")
        if method not in baselines and best is not None:
            r = _median_epochs(m) / _median_epochs(methods[best])
            ok_speed = r <= GOAL_RATIO
            ok_test = test is not None and best_test is not None and 100 * (best_test - test) <= GOAL_POINTS
            verdicts.append(f"- {name}, `{method}`: {r:.2f}× the epochs of `{best}` "
                            f"({'meets' if ok_speed else 'misses'} ≤ {GOAL_RATIO}×); final test accuracy "
                            f"{diff} points vs the best baseline ({'within' if ok_test else 'outside'} "
                            f"{GOAL_POINTS} point)" if test is not None else
                            f"- {name}, `{method}`: {r:.2f}× the epochs of `{best}` (no test split)")
    return rows, verdicts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--baselines", default="standard,fixed-etf")
    a = p.parse_args()
    baselines = a.baselines.split(",")
    print(table_head(["setting", "method", "selected lr", "epochs to the train-acc threshold", "train s to it",
                      "× best baseline", "final test acc %", "Δ test (points)"], "llrrrrrr"))
    verdicts = []
    for path in sorted(a.root.glob("*/summary.json")):
        rows, v = setting_rows(path.parent.name, json.loads(path.read_text()), baselines)
        print("\n".join(rows))
        verdicts += v
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()

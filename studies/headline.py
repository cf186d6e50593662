"""The headline table: epochs (and training seconds) to the thresholds per setting and method, from the
``summary.json`` files that ``ncguide compare`` wrote.

    python studies/headline.py studies/results/convergence [--metric train_acc]

Cells are ``median [min–max]`` over seeds; ``— (r/n)`` when the median seed did not reach it (r of n seeds did).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import cell, table_head


def reach_cell(reach: dict, key: str = "epoch", spec: str = "{:.0f}") -> str:
    """The cell of one threshold of ``summary.json``; ``— (r/n)`` when the median seed did not reach it."""
    stats = reach.get(key) or {}
    if reach["reached"] * 2 <= reach["total"] or stats.get("median") is None:
        return f"— ({reach['reached']}/{reach['total']})"
    text = cell(stats["median"], stats["min"], stats["max"], spec)
    return text if reach["reached"] == reach["total"] else f"{text} ({reach['reached']}/{reach['total']})"


def rows(root: Path, metric: str) -> list[str]:
    out = []
    for summary_path in sorted(root.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        for method, s in summary["methods"].items():
            reach = s["reach"].get(metric)
            nc1 = s["reach"].get("nc1")
            test = s["final"].get("test_acc", {}).get("median")
            out.append(
                f"| {summary_path.parent.name} | `{method}` | {len(s['seeds'])} | "
                f"{reach_cell(reach) if reach else '—'} | {reach_cell(reach, 'wall_s', '{:.2g}') if reach else '—'} | "
                f"{reach_cell(nc1) if nc1 else '—'} | {'—' if test is None else f'{100 * test:.1f}%'} |"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--metric", default="train_acc")
    args = parser.parse_args()
    print(table_head(["setting", "method", "seeds", f"epochs to {args.metric} threshold", "training s to it",
                     "epochs to NC1 threshold", "final test acc"], "llrlllr"))
    print("\n".join(rows(args.root, args.metric)))


if __name__ == "__main__":
    main()

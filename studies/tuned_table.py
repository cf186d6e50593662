"""The tuned study's tables (``studies/tuned.sh``), from the ``summary.json`` of each tuned compare under ROOT: the
same text as BENCHMARKS.md §5, which ``python studies/headline.py --write`` writes from the committed ones.

    python studies/tuned_table.py studies/results/tuned

1. Per setting (its training-accuracy threshold in brackets) and head: the selected learning rate, epochs to the
   threshold (report seeds, first hit, ``median [min–max]``), the ratio of median epochs to the fastest baseline's
   with its bootstrap 95% interval and permutation p-value (computed from the per-seed epochs), epochs to the NC1
   threshold, the final test accuracy and its difference to the best baseline's median (in points).
2. Every grid point: median epochs over the selection seeds per head.
3. What the verdicts say, against the project's goal (≤ 0.7× the epochs, test accuracy within 0.5 point).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headline import TUNED, settings_in, tuned_grid, tuned_say, tuned_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    a = p.parse_args()
    settings = settings_in(a.root, TUNED, TUNED.roots[0][1])
    print(tuned_table(settings))
    print(tuned_grid(settings))
    print(tuned_say(settings), end="")


if __name__ == "__main__":
    main()

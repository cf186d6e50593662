"""Convergence parity of the warm solver route: tables from the output of ``studies/warm_parity.sh``.

    python studies/warm_parity_table.py studies/results/warm-parity

ROOT holds ``<setting>/{exact,warm}/`` compare folders (``nearest-etf`` only). Prints, in markdown:

1. Per setting and variant, from each folder's ``summary.json``: epochs to the training-accuracy and NC1
   thresholds and the final train acc, test acc, nc1, nc2_w and nc3, ``median [min–max]`` over seeds, and
   the verdict: *equal within the seed spread* when, for every column, each variant's median lies inside
   the other's ``[min–max]`` (for the epoch columns: both reached by every seed, or by none).
2. Per seed (needs the run logs, ``runs/``): warm − exact in epochs to each threshold, the absolute
   differences of the final metrics, and the first evaluated epoch whose ``train_loss`` differs at all
   (how long the two trajectories stay bitwise equal).
3. Per warm run (needs ``runs/.../checkpoint.pt``): solver calls (``warm.steps``), exact refreshes
   (``warm.refreshes``), warm steps (the rest) and warm steps that fell back to ``U_prev``
   (``warm.fallbacks``), from the head's state dict in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ncguide.experiments.checkpoint import CHECKPOINT, load_checkpoint
from ncguide.experiments.files import read_jsonl
from tables import cell, first_epoch, median_range, reached, table_head

SETTINGS = ("ufm-k10", "ufm-k100", "mnist1d", "fashion-mnist")
VARIANTS = ("exact", "warm")
METHOD = "nearest-etf"
# final metric -> (cell format, scale)
FINALS = {"train_acc": ("{:.2f}", 100.0), "test_acc": ("{:.2f}", 100.0), "nc1": ("{:.3g}", 1.0),
          "nc2_w": ("{:.3g}", 1.0), "nc3": ("{:.3g}", 1.0)}


def load(root: Path, setting: str) -> dict[str, dict] | None:
    """``{variant: the nearest-etf entry of its summary.json}``, or None unless both exist."""
    out = {}
    for v in VARIANTS:
        path = root / setting / v / "summary.json"
        if not path.is_file():
            return None
        summary = json.loads(path.read_text())
        out[v] = {**summary["methods"][METHOD], "thresholds": summary["thresholds"]}
    return out


def reach_epochs(s: dict, key: str) -> list[int | None]:
    return [None if e is None else int(e) for e in s["reach"][key]["epoch"]["per_seed"]]


def final_stats(s: dict, key: str) -> dict | None:
    st = s["final"].get(key)
    return st if st and st.get("median") is not None else None


def inside(x: float, st: dict) -> bool:
    return st["min"] <= x <= st["max"]


def equal_within_spread(a: dict, b: dict) -> tuple[bool, list[str]]:
    """Each variant's median inside the other's [min–max], column by column; the columns where not."""
    bad = []
    for key in ("train_acc", "nc1"):
        ea, eb = reach_epochs(a, key), reach_epochs(b, key)
        ra, rb = [e for e in ea if e is not None], [e for e in eb if e is not None]
        if len(ra) != len(ea) or len(rb) != len(eb):
            if ra or rb:
                bad.append(f"epochs to {key} (reached {len(ra)}/{len(ea)} vs {len(rb)}/{len(eb)})")
            continue
        sa, sb = a["reach"][key]["epoch"], b["reach"][key]["epoch"]
        if not (inside(sa["median"], sb) and inside(sb["median"], sa)):
            bad.append(f"epochs to {key}")
    for key in FINALS:
        sa, sb = final_stats(a, key), final_stats(b, key)
        if sa is None and sb is None:
            continue
        if sa is None or sb is None or not (inside(sa["median"], sb) and inside(sb["median"], sa)):
            bad.append(key)
    return not bad, bad


def summary_rows(root: Path) -> tuple[list[str], list[str]]:
    rows, verdicts = [], []
    for setting in SETTINGS:
        both = load(root, setting)
        if both is None:
            continue
        for v in VARIANTS:
            s = both[v]
            thr = s["thresholds"]
            cells = [reached(reach_epochs(s, "train_acc")), reached(reach_epochs(s, "nc1"))]
            for key, (spec, scale) in FINALS.items():
                st = final_stats(s, key)
                lo_med_hi = None if st is None else [scale * st[k] for k in ("median", "min", "max")]
                cells.append("—" if lo_med_hi is None else cell(*lo_med_hi, spec))
            rows.append(f"| {setting} | {v} | {len(s['seeds'])} | {thr['train_acc']['value']:g} | "
                        f"{thr['nc1']['value']:g} | " + " | ".join(cells) + " |")
        ok, bad = equal_within_spread(both["exact"], both["warm"])
        verdicts.append(f"- **{setting}**: " + ("equal within the seed spread" if ok else
                                                 "NOT equal within the seed spread: " + ", ".join(bad)))
    return rows, verdicts


def first_difference(ra: list[dict], rb: list[dict], key: str = "train_loss") -> str:
    for x, y in zip(ra, rb):
        if x[key] != y[key]:
            return str(x["epoch"])
    return "never" if len(ra) == len(rb) else f"after {min(len(ra), len(rb))} evaluations (logs differ in length)"


def paired_rows(root: Path) -> list[str]:
    rows = []
    for setting in SETTINGS:
        both = load(root, setting)
        if both is None:
            continue
        thr = both["exact"]["thresholds"]
        dirs = {v: root / setting / v / "runs" / METHOD for v in VARIANTS}
        seeds = {p.name for p in dirs["exact"].glob("seed-*")} & {p.name for p in dirs["warm"].glob("seed-*")}
        for seed in sorted(seeds, key=lambda n: int(n.removeprefix("seed-"))):
            recs = {v: read_jsonl(dirs[v] / seed / "metrics.jsonl") for v in VARIANTS}
            if not all(recs.values()):
                continue
            deltas = []
            for key in ("train_acc", "nc1"):
                e = [first_epoch(recs[v], key, thr[key]["value"], below=thr[key]["op"] == "<=") for v in VARIANTS]
                deltas.append("—" if None in e else f"{e[1] - e[0]:+d}" if e[0] != e[1] else "0")
            fin = []
            for key, (spec, scale) in FINALS.items():
                a, b = recs["exact"][-1].get(key), recs["warm"][-1].get(key)
                fin.append("—" if a is None or b is None else spec.format(scale * abs(b - a)))
            rows.append(f"| {setting} | {seed.removeprefix('seed-')} | " + " | ".join(deltas + fin)
                        + f" | {first_difference(recs['exact'], recs['warm'])} |")
    return rows


def count_rows(root: Path) -> list[str]:
    rows = []
    for setting in SETTINGS:
        runs = root / setting / "warm" / "runs" / METHOD
        per_seed = []
        for seed_dir in sorted(runs.glob("seed-*"), key=lambda p: int(p.name.removeprefix("seed-"))):
            path = seed_dir / CHECKPOINT
            if not path.is_file():
                continue
            ckpt = load_checkpoint(path)
            head = ckpt["head"]
            steps, refreshes, fallbacks = (int(head[f"warm.{k}"]) for k in ("steps", "refreshes", "fallbacks"))
            per_seed.append((seed_dir.name.removeprefix("seed-"), steps, refreshes, fallbacks, ckpt.get("finished")))
        for seed, steps, refreshes, fallbacks, finished in per_seed:
            rows.append(f"| {setting} | {seed} | {steps} | {refreshes} | {steps - refreshes} | {fallbacks} | "
                        f"{100 * refreshes / steps:.1f}% |" + ("" if finished else " (unfinished run)"))
        if per_seed:
            _, steps, refreshes, fallbacks, _ = zip(*per_seed)
            warm = [s - r for s, r in zip(steps, refreshes)]
            share = [100 * r / s for s, r in zip(steps, refreshes)]
            rows.append(f"| {setting} | all, median [min–max] | {median_range(steps, '{:.0f}')} | "
                        f"{median_range(refreshes, '{:.0f}')} | {median_range(warm, '{:.0f}')} | "
                        f"{median_range(fallbacks, '{:.0f}')} | {median_range(share, '{:.1f}')}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    args = parser.parse_args()

    rows, verdicts = summary_rows(args.root)
    print("`nearest-etf`, exact (default `solver=auto`) vs `solver=warm`; cells median [min–max] over seeds;")
    print("epochs: the first evaluated epoch at the threshold ((r/n reached) when not every seed did); final")
    print("metrics at the last epoch, accuracies in %.")
    print()
    print(table_head(["setting", "solver", "seeds", "train-acc thr.", "NC1 thr.", "epochs to train-acc thr.",
                      "epochs to NC1 thr.", "final train acc", "final test acc", "nc1", "nc2_w", "nc3"],
                     "llrrrllllll" + "l"))
    print("\n".join(rows))
    print()
    print("Verdict (each variant's median inside the other's [min–max], every column):")
    print("\n".join(verdicts))

    paired = paired_rows(args.root)
    if paired:
        print()
        print("Per seed, warm − exact (same seed, same data order): Δ epochs to the thresholds, abs Δ of the final")
        print("metrics (accuracies in points), and the first evaluated epoch whose train_loss differs at all.")
        print()
        print(table_head(["setting", "seed", "Δ epochs train-acc", "Δ epochs NC1", "abs Δ train acc", "abs Δ test acc",
                          "abs Δ nc1", "abs Δ nc2_w", "abs Δ nc3", "train_loss first differs at epoch"], "lrllllllll"))
        print("\n".join(paired))

    counts = count_rows(args.root)
    if counts:
        print()
        print("Warm runs: solver calls (`warm.steps`, one per training step), exact refreshes (`warm.refreshes`),")
        print("warm steps (calls − refreshes) and warm steps that fell back to `U_prev` (`warm.fallbacks`), from")
        print("the head's state dict in each run's final checkpoint.")
        print()
        print(table_head(["setting", "seed", "solver calls", "exact refreshes", "warm steps", "fallbacks",
                          "refresh share"], "lrrrrrr"))
        print("\n".join(counts))


if __name__ == "__main__":
    main()

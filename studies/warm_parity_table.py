"""Convergence parity of the warm solver route: tables from the output of ``studies/warm_parity.sh``.

    python studies/warm_parity_table.py studies/results/warm-parity
    python studies/warm_parity_table.py ROOT --a exact --b exact-svd --settings mnist1d   (any two variants)
    python studies/warm_parity_table.py ROOT --settings mnist1d+mnist1d-more-seeds        (pool seed folders)

ROOT holds ``<setting>/<variant>/`` compare folders of ``nearest-etf`` (``exact``: the default solver, ``warm``:
``solver=warm``); A and B name two variants (default ``exact`` and ``warm``). Prints, in markdown:

1. Per setting and variant, from each folder's ``summary.json``: epochs to the training-accuracy and NC1
   thresholds and the final train acc, test acc, nc1, nc2_w and nc3, ``median [min–max]`` over seeds, and
   the verdict: *equal within the seed spread* when, for every column, each variant's median lies inside
   the other's ``[min–max]`` (epoch columns: also the same number of seeds reaching the threshold). A
   column whose values are all below its rounding floor (``nc2_w`` < 1e-6: the nearest-ETF head's ``W`` is
   a simplex ETF by construction, so ``nc2_w`` only measures float32 rounding) is reported as such and not
   compared.
2. Per seed (needs the run logs, ``runs/``): B − A in epochs to each threshold, in the final metrics and in
   the test accuracy averaged over the last 5 evaluations, and the first evaluated epoch whose
   ``train_loss`` differs at all (how long the two trajectories stay bitwise equal); per setting, the
   differences as ``median [min–max]`` and how many seeds have B above / equal / below A.
3. Per run of B that used the warm route (needs ``runs/.../checkpoint.pt``): solver calls (``warm.steps``),
   exact refreshes (``warm.refreshes``), warm steps (the rest) and warm steps that fell back to ``U_prev``
   (``warm.fallbacks``), from the head's state dict in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ncguide.experiments.checkpoint import CHECKPOINT, load_checkpoint
from ncguide.experiments.files import read_jsonl
from ncguide.experiments.report import load_runs, summarize
from tables import cell, first_epoch, mean_last, median_range, reached, table_head

SETTINGS = ("ufm-k10", "ufm-k100", "mnist1d", "fashion-mnist")
METHOD = "nearest-etf"
# final metric -> (cell format, scale)
FINALS = {"train_acc": ("{:.2f}", 100.0), "test_acc": ("{:.2f}", 100.0), "nc1": ("{:.3g}", 1.0),
          "nc2_w": ("{:.3g}", 1.0), "nc3": ("{:.3g}", 1.0)}
ROUNDING_FLOOR = {"nc2_w": 1e-6}


def load(root: Path, setting: str, variants: tuple[str, str]) -> dict[str, dict] | None:
    """``{variant: the nearest-etf entry of its summary.json}``, or None unless both exist. A setting
    ``a+b`` pools the seeds of the folders ``a`` and ``b`` (summarised again from their run logs, with the
    thresholds of ``a``'s summary.json)."""
    out = {}
    for v in variants:
        paths = [root / part / v / "summary.json" for part in setting.split("+")]
        if not all(p.is_file() for p in paths):
            return None
        summary = json.loads(paths[0].read_text())
        if len(paths) > 1:
            runs: dict[int, list[dict]] = {}
            for p in paths:
                runs.update(load_runs(p.parent)[METHOD])
            thresholds = {k: (t["op"], t["value"]) for k, t in summary["thresholds"].items()}
            summary = summarize({METHOD: dict(sorted(runs.items()))}, thresholds)
        out[v] = {**summary["methods"][METHOD], "thresholds": summary["thresholds"]}
    return out


def run_dirs(root: Path, setting: str, variant: str) -> dict[str, Path]:
    """``{seed-<s>: its run folder}`` over the folders of ``setting`` (``a+b`` pools them)."""
    out = {}
    for part in setting.split("+"):
        out.update({p.name: p for p in (root / part / variant / "runs" / METHOD).glob("seed-*")})
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].removeprefix("seed-"))))


def reach_epochs(s: dict, key: str) -> list[int | None]:
    return [None if e is None else int(e) for e in s["reach"][key]["epoch"]["per_seed"]]


def final_stats(s: dict, key: str) -> dict | None:
    st = s["final"].get(key)
    return st if st and st.get("median") is not None else None


def inside(x: float, st: dict) -> bool:
    return st["min"] <= x <= st["max"]


def compare_columns(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """Each variant's median inside the other's [min–max], column by column: (columns that differ,
    columns at their rounding floor)."""
    bad, floor = [], []
    for key in ("train_acc", "nc1"):
        ea, eb = reach_epochs(a, key), reach_epochs(b, key)
        ra, rb = [e for e in ea if e is not None], [e for e in eb if e is not None]
        if len(ra) != len(rb):
            bad.append(f"epochs to {key} (reached by {len(ra)}/{len(ea)} vs {len(rb)}/{len(eb)} seeds)")
        elif ra:
            sa, sb = a["reach"][key]["epoch"], b["reach"][key]["epoch"]
            if not (inside(sa["median"], sb) and inside(sb["median"], sa)):
                bad.append(f"epochs to {key}")
    for key in FINALS:
        sa, sb = final_stats(a, key), final_stats(b, key)
        if sa is None and sb is None:
            continue
        both_there = sa is not None and sb is not None
        if both_there and key in ROUNDING_FLOOR and max(sa["max"], sb["max"]) < ROUNDING_FLOOR[key]:
            floor.append(f"{key} (all < {ROUNDING_FLOOR[key]:g})")
        elif sa is None or sb is None or not (inside(sa["median"], sb) and inside(sb["median"], sa)):
            bad.append(key)
    return bad, floor


def summary_rows(root: Path, settings: list[str], variants: tuple[str, str]) -> tuple[list[str], list[str]]:
    rows, verdicts = [], []
    for setting in settings:
        both = load(root, setting, variants)
        if both is None:
            continue
        for v in variants:
            s = both[v]
            thr = s["thresholds"]
            cells = [reached(reach_epochs(s, "train_acc")), reached(reach_epochs(s, "nc1"))]
            for key, (spec, scale) in FINALS.items():
                st = final_stats(s, key)
                vals = None if st is None else [scale * st[k] for k in ("median", "min", "max")]
                cells.append("—" if vals is None else cell(*vals, spec))
            rows.append(f"| {setting} | {v} | {len(s['seeds'])} | {thr['train_acc']['value']:g} | "
                        f"{thr['nc1']['value']:g} | " + " | ".join(cells) + " |")
        bad, floor = compare_columns(*(both[v] for v in variants))
        text = "equal within the seed spread" if not bad else "NOT equal within the seed spread: " + ", ".join(bad)
        verdicts.append(f"- **{setting}**: {text}" + (f"; at rounding level, not compared: {', '.join(floor)}"
                                                        if floor else ""))
    return rows, verdicts


def first_difference(ra: list[dict], rb: list[dict], key: str = "train_loss") -> str:
    for x, y in zip(ra, rb):
        if x[key] != y[key]:
            return str(x["epoch"])
    return "never" if len(ra) == len(rb) else f"after {min(len(ra), len(rb))} evaluations (logs differ in length)"


def signs(v: list[float]) -> str:
    return f"{sum(x > 0 for x in v)}/{sum(x == 0 for x in v)}/{sum(x < 0 for x in v)}"


# per-seed difference columns: name -> (cell format, scale); "test_acc_last5" is the mean over the last 5 evals
PAIRED = {"train_acc": ("{:+.2f}", 100.0), "test_acc": ("{:+.2f}", 100.0), "test_acc_last5": ("{:+.2f}", 100.0),
          "nc1": ("{:+.2g}", 1.0), "nc3": ("{:+.2g}", 1.0)}


def paired_rows(root: Path, settings: list[str], variants: tuple[str, str]) -> list[str]:
    rows = []
    for setting in settings:
        both = load(root, setting, variants)
        if both is None:
            continue
        thr = both[variants[0]]["thresholds"]
        dirs = [run_dirs(root, setting, v) for v in variants]
        diffs: dict[str, list[float]] = {}
        for seed in [s for s in dirs[0] if s in dirs[1]]:
            recs = [read_jsonl(d[seed] / "metrics.jsonl") for d in dirs]
            if not all(recs):
                continue
            row = {}
            for key in ("train_acc", "nc1"):
                e = [first_epoch(r, key, thr[key]["value"], below=thr[key]["op"] == "<=") for r in recs]
                row[f"epochs to {key}"] = None if None in e else e[1] - e[0]
            for key, (_, scale) in PAIRED.items():
                if key == "test_acc_last5":
                    x = [mean_last(r, "test_acc") if r[-1].get("test_acc") is not None else None for r in recs]
                else:
                    x = [r[-1].get(key) for r in recs]
                row[key] = None if None in x else scale * (x[1] - x[0])
            for k, v in row.items():
                if v is not None:
                    diffs.setdefault(k, []).append(v)
            epochs = [row[f"epochs to {k}"] for k in ("train_acc", "nc1")]
            cells = ["—" if e is None else f"{e:+d}" if e else "0" for e in epochs]
            cells += ["—" if row[k] is None else spec.format(row[k]) for k, (spec, _) in PAIRED.items()]
            rows.append(f"| {setting} | {seed.removeprefix('seed-')} | " + " | ".join(cells)
                        + f" | {first_difference(*recs)} |")
        if diffs:
            specs = ["{:+.0f}", "{:+.0f}"] + [spec for spec, _ in PAIRED.values()]
            keys = ["epochs to train_acc", "epochs to nc1", *PAIRED]
            cells = [median_range(diffs[k], spec) + f" ({signs(diffs[k])})" if k in diffs else "—"
                     for k, spec in zip(keys, specs)]
            rows.append(f"| **{setting}** | all: median [min–max] (above/equal/below) | " + " | ".join(cells) + " | |")
    return rows


def count_rows(root: Path, settings: list[str], variant: str) -> list[str]:
    rows = []
    for setting in settings:
        per_seed = []
        for seed_dir in run_dirs(root, setting, variant).values():
            path = seed_dir / CHECKPOINT
            if not path.is_file():
                continue
            ckpt = load_checkpoint(path)
            head = ckpt["head"]
            if "warm.steps" not in head:
                continue
            steps, refreshes, fallbacks = (int(head[f"warm.{k}"]) for k in ("steps", "refreshes", "fallbacks"))
            per_seed.append((seed_dir.name.removeprefix("seed-"), steps, refreshes, fallbacks, ckpt.get("finished")))
        for seed, steps, refreshes, fallbacks, finished in per_seed:
            rows.append(f"| {setting} | {seed} | {steps} | {refreshes} | {steps - refreshes} | {fallbacks} | "
                        f"{100 * refreshes / steps:.1f}% |" + ("" if finished else " (unfinished run)"))
        if per_seed:
            _, steps, refreshes, fallbacks, _ = zip(*per_seed)
            warm = [s - r for s, r in zip(steps, refreshes)]
            share = [100 * r / s for s, r in zip(steps, refreshes)]
            rows.append(f"| **{setting}** | all: median [min–max] | {median_range(steps, '{:.0f}')} | "
                        f"{median_range(refreshes, '{:.0f}')} | {median_range(warm, '{:.0f}')} | "
                        f"{median_range(fallbacks, '{:.0f}')} | {median_range(share, '{:.1f}')}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--a", default="exact", help="reference variant (folder name under each setting)")
    parser.add_argument("--b", default="warm", help="variant compared with A")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings, in table order")
    args = parser.parse_args()
    variants, settings = (args.a, args.b), [s for s in args.settings.split(",") if s]

    rows, verdicts = summary_rows(args.root, settings, variants)
    print(f"`{METHOD}`, variant `{args.a}` vs `{args.b}`; cells median [min–max] over seeds; epochs: the first")
    print("evaluated epoch at the threshold ((r/n reached) when not every seed did); final metrics at the last")
    print("epoch, accuracies in %.")
    print()
    print(table_head(["setting", "variant", "seeds", "train-acc thr.", "NC1 thr.", "epochs to train-acc thr.",
                      "epochs to NC1 thr.", "final train acc", "final test acc", "nc1", "nc2_w", "nc3"],
                     "llrrrlllllll"))
    print("\n".join(rows))
    print()
    print("Verdict (each variant's median inside the other's [min–max], every column):")
    print("\n".join(verdicts))

    paired = paired_rows(args.root, settings, variants)
    if paired:
        print()
        print(f"Per seed, `{args.b}` − `{args.a}` (same seed, same data order): epochs to the thresholds, final")
        print("metrics (accuracies in points), test accuracy averaged over the last 5 evaluations, and the first")
        print("evaluated epoch whose train_loss differs at all.")
        print()
        print(table_head(["setting", "seed", "Δ epochs to train-acc thr.", "Δ epochs to NC1 thr.", "Δ train acc",
                          "Δ test acc", "Δ test acc, last 5", "Δ nc1", "Δ nc3", "train_loss first differs at epoch"],
                         "llllllllll"))
        print("\n".join(paired))

    counts = count_rows(args.root, settings, args.b)
    if counts:
        print()
        print(f"Runs of `{args.b}`: solver calls (`warm.steps`, one per training step), exact refreshes")
        print("(`warm.refreshes`), warm steps (calls − refreshes) and warm steps that fell back to `U_prev`")
        print("(`warm.fallbacks`), from the head's state dict in each run's final checkpoint.")
        print()
        print(table_head(["setting", "seed", "solver calls", "exact refreshes", "warm steps", "fallbacks",
                          "refresh share"], "llrrrrr"))
        print("\n".join(counts))


if __name__ == "__main__":
    main()

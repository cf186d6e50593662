"""README.md and BENCHMARKS.md agree with the committed study summaries: their generated blocks are exactly what
``studies/headline.py`` writes from ``studies/results/*/summary.json``, and the generator says what the data say
(partial folders are not results, older first-hit summaries get the verdict of their own per-seed epochs)."""

from __future__ import annotations

import difflib
import itertools
import json
import statistics
import sys
from pathlib import Path

import pytest

from ncguide.experiments.report import summarize
from ncguide.experiments.verdict import build_verdict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "studies"))
headline = pytest.importorskip("headline")
tables = pytest.importorskip("tables")


def test_committed_readme_and_benchmarks_agree_with_the_committed_summaries():
    for name, (old, new) in headline.generate(REPO).items():
        diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), name, "from the summaries"))
        assert old == new, f"{name} differs from the summaries; run python studies/headline.py --write\n{diff}"


# ----------------------------------------------------------------------------------------------------
# a small repository of hand-made summaries


THRESHOLDS = {"train_acc": (">=", 0.99), "nc1": ("<=", 0.1)}


def records(first: int, dip: int | None = None, epochs: int = 6, test: float | None = 0.9) -> list[dict]:
    """A run whose training accuracy reaches 99% at epoch ``first`` and, when ``dip`` is given, falls below it
    at that epoch only (so its sustained epoch is ``dip + 1``)."""
    out = []
    for e in range(epochs + 1):
        acc = 1.0 if e >= first and e != dip else 0.5
        out.append({"epoch": e, "train_acc": acc, "nc1": 0.05 if e >= first else 1.0, "train_loss": 1.0 / (e + 1),
                    "test_acc": test, "wall_s": float(e)})
    return out


def write_compare(folder: Path, runs: dict[str, dict[int, list[dict]]], config_seeds: list[int],
                  sustained: bool = True, readme: str | None = None, **extra) -> dict:
    """A compare folder as ``ncguide compare`` leaves it in git: summary.json (with a verdict when ``sustained``,
    like today's reports; without sustained epochs and verdict, like the older ones) and config.yaml."""
    summary = summarize(runs, THRESHOLDS, [3, 6])
    summary["excluded"] = []
    if sustained:
        data = {m: {"seeds": list(by_seed),
                    "sustained": [float("inf") if e is None else e
                                  for e in summary["methods"][m]["sustained"]["train_acc"]["epoch"]["per_seed"]],
                    "test_acc": [r[-1]["test_acc"] for r in by_seed.values()],
                    "train_loss": [r[-1]["train_loss"] for r in by_seed.values()]} for m, by_seed in runs.items()}
        summary["verdict"] = build_verdict(data, "nearest-etf", 0.99)
    else:
        for m in summary["methods"].values():
            del m["sustained"], m["at_epoch"]
        summary = {"thresholds": summary["thresholds"], "methods": summary["methods"]}
    summary.update(extra)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    methods = "".join(f"- {m}\n" for m in runs)
    seeds = "".join(f"- {s}\n" for s in config_seeds)
    (folder / "config.yaml").write_text(f"methods:\n{methods}seeds:\n{seeds}dataset: mnist1d\nmodel: cnn1d\n"
                                        "optimizer: adam\nlr: 0.001\nepochs: 6\n")
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return summary


def marked(names: list[str]) -> str:
    return "".join(f"text before\n<!-- headline:begin {n} -->\nstale\n<!-- headline:end {n} -->\ntext after\n"
                   for n in names)


@pytest.fixture
def repo(tmp_path):
    """Paper-protocol folders (one complete and slower, one partial by its runs, one by its README) and an older
    first-hit study; README.md and BENCHMARKS.md with stale blocks."""
    results = tmp_path / "studies" / "results"
    slow = {s: records(2) for s in (1, 2, 3)}
    fast = {s: records(1) for s in (1, 2, 3)}
    write_compare(results / "paper-protocol" / "slower", {"standard": fast, "nearest-etf": slow}, [1, 2, 3])
    write_compare(results / "paper-protocol" / "half", {"standard": fast, "nearest-etf": {1: records(1)}},
                  [1, 2, 3])
    write_compare(results / "paper-protocol" / "stopped", {"standard": fast, "nearest-etf": fast}, [1, 2, 3],
                  readme="# A partial run\n\nStopped by the machine's time limit.\n")
    write_compare(results / "tuned" / "older",
                  {"standard": {s: records(e) for s, e in zip(range(5), (4, 5, 5, 6, 4))},
                   "fixed-etf": {s: records(e) for s, e in zip(range(5), (6, 6, 5, 6, 6))},
                   "nearest-etf": {s: records(e, test=0.88) for s, e in zip(range(5), (3, 3, 2, 5, 4))},
                   "standard-plain": {s: records(1) for s in range(5)}},
                  list(range(5)), sustained=False)
    eight = range(8)
    write_compare(results / "best-vs-best" / "tuned8",
                  {"standard": {s: records(4 + s % 2, test=0.90) for s in eight},
                   "fixed-etf": {s: records(6, test=0.91) for s in eight},
                   "nearest-etf": {s: records(3 + s % 2, dip=5 if s == 0 else None, test=0.89 + 0.002 * s)
                                   for s in eight}},
                  list(eight), selected={m: {"lr": 0.01} for m in ("standard", "fixed-etf", "nearest-etf")},
                  edge={"standard": {"lr": None}, "fixed-etf": {"lr": None}, "nearest-etf": {"lr": "high"}})
    for name, blocks in headline.BLOCKS.items():
        (tmp_path / name).write_text(marked(list(blocks)))
    return tmp_path


def verdict_rows(text: str) -> dict[str, str]:
    return {line.split(" | ")[1].split(" ")[0].strip("`"): line for line in text.splitlines()
            if line.startswith("| ") and " vs " in line}


def test_a_partial_folder_is_listed_as_partial_never_as_a_result(repo):
    text = headline.readme_results(repo)
    rows = verdict_rows(text)
    assert set(rows) == {"slower", "older", "tuned8"}
    assert "Partial, not a result: `studies/results/paper-protocol/half/` (4 of 6 runs finished)" in text
    assert "`studies/results/paper-protocol/stopped/` (its README.md says it is partial)" in text
    tables_text = text.split("### ")[1]
    assert "| `half`" not in tables_text and "| `stopped`" not in tables_text


def test_a_slower_result_is_said_as_plainly_as_a_faster_one(repo):
    text = headline.readme_results(repo)
    assert ("**The paper's protocol** (`nearest-etf`, sustained epochs, against the fastest other head): faster on "
            "no setting; slower on `slower` (2.00× [2.00–2.00]") in text
    assert "is met on 0 of 1 setting." in text
    assert "slower (interval above 1)" in verdict_rows(text)["slower"]


def midranks(values):
    order = sorted(values)
    return [statistics.mean(i + 1 for i, v in enumerate(order) if v == x) for x in values]


def test_an_older_summary_gets_the_verdict_of_its_own_first_hit_epochs(repo):
    """Against an independent computation: the faster of the paper's baselines by median first-hit epochs (the
    ablation `standard-plain`, faster still, is not a baseline), the ratio of medians, and the exact two-sided
    rank-sum permutation p-value by brute force over every split of the 10 seeds."""
    summary = json.loads((repo / "studies/results/tuned/older/summary.json").read_text())
    v = tables.first_hit_verdict(summary)
    a, b = [3, 3, 2, 5, 4], [4, 5, 5, 6, 4]  # nearest-etf; standard, faster than fixed-etf (6)
    assert v["metric"] == "first" and v["baseline"] == "standard"
    assert v["ratio"] == pytest.approx(statistics.median(a) / statistics.median(b))
    ranks = midranks(a + b)
    centre = len(a) * (len(a) + len(b) + 1) / 2
    observed = abs(sum(ranks[:5]) - centre)
    splits = list(itertools.combinations(range(10), 5))
    p = sum(abs(sum(ranks[i] for i in s) - centre) >= observed - 1e-9 for s in splits) / len(splits)
    assert v["p_value"] == pytest.approx(p)
    lo, hi = v["ci95"]
    assert lo <= v["ratio"] <= hi
    row = verdict_rows(headline.readme_results(repo))["older"]
    assert "| first hit |" in row and "`standard`" in row and f"{v['ratio']:.2f}×" in row
    assert f"{headline.signed(100 * (0.88 - 0.9))} (medians only)" in row


def test_check_fails_on_a_difference_and_write_makes_it_pass(repo, monkeypatch, capsys):
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["headline.py", *args, "--repo", str(repo)])
        try:
            headline.main()
        except SystemExit as e:
            return e.code
        return 0

    assert run("--check") == 1
    assert "README.md, BENCHMARKS.md differ from the committed summaries" in capsys.readouterr().err
    assert run("--write") == 0
    text = (repo / "README.md").read_text()
    assert text.startswith("text before\n<!-- headline:begin results") and text.endswith("text after\n")
    assert "stale" not in text
    assert run("--check") == 0


def test_a_missing_block_is_one_clear_error(repo, monkeypatch, capsys):
    (repo / "README.md").write_text("no markers here\n")
    monkeypatch.setattr(sys, "argv", ["headline.py", "--check", "--repo", str(repo)])
    with pytest.raises(SystemExit) as e:
        headline.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("headline.py: error: README.md needs exactly one block 'results'")


def test_best_against_best_shows_the_selection_its_edge_and_both_intervals(repo):
    """8 report seeds (medians between two seeds), a winner at the grid's edge, a seed that dips below the
    threshold after reaching it (its sustained epoch is later than its first hit), test accuracy with per-seed
    values, so an interval and p for it too."""
    text = headline.readme_results(repo)
    best = text.split("### Best against best")[1]
    row = next(line for line in best.splitlines() if line.startswith("| `tuned8` (99%) | `nearest-etf`"))
    # sustained, seeds 0..7: 6 (seed 0 dips at epoch 5), 4, 3, 4, 3, 4, 3, 4; first hit: 3, 4, 3, 4, ...
    assert row == ("| `tuned8` (99%) | `nearest-etf` | lr 0.01 (at the grid's edge) | 8 | 4 [3–6] | 3.5 [3–4] | "
                   "89.7 [89.0–90.4]% |")
    summary = json.loads((repo / "studies/results/best-vs-best/tuned8/summary.json").read_text())
    v = summary["verdict"]
    assert v["baseline"] == "standard" and v["ratio"] == pytest.approx(4 / 4.5)
    verdict_row = verdict_rows(text)["tuned8"]
    assert f"{v['ratio']:.2f}× [{v['ci95'][0]:.2f}–{v['ci95'][1]:.2f}]" in verdict_row
    lo, hi = v["test_acc"]["ci95"]
    assert f"{headline.signed(v['test_acc']['difference'], '{:+.2f}')} [{headline.signed(lo, '{:+.2f}')}, " \
           f"{headline.signed(hi, '{:+.2f}')}]" in verdict_row

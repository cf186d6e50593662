"""The verdict's statistics (``experiments/verdict.py``) against direct computations: the permutation p-value
by brute force over every split, the bootstrap interval from an independently coded resampling with the same
seed, a p-value's behaviour under the null; seeds that never reach the threshold; the verdict in a report."""

import itertools
import json
import math
import statistics

import numpy as np
import pytest

from ncguide.experiments import report as report_mod
from ncguide.experiments.report import write_report
from ncguide.experiments.verdict import (
    RESAMPLES,
    build_verdict,
    length_caution,
    median_difference,
    median_ratio,
    midranks,
    permutation_p_value,
    ratio_of,
    resolve_focus,
    smallest_p_value,
    verdict_lines,
)
from ncguide.experiments.verdict import bootstrap_interval as interval

INF = math.inf


def _ratio(x: float, y: float) -> float:
    """The ratio of two medians as the verdict defines it, written out case by case."""
    if x == y:
        return 1.0
    if y == 0:
        return INF
    return x / y  # inf / finite = inf, finite / inf = 0


def _brute_p(a, b) -> float:
    """Two-sided exact permutation p-value of the rank sum, every split of the pooled values enumerated in
    plain Python; midranks counted out: a value's rank is 1 + (values below) + (other values equal) / 2."""
    z = list(a) + list(b)
    rank = [1 + sum(w < v for w in z) + (sum(w == v for w in z) - 1) / 2 for v in z]
    mean = len(a) * (len(z) + 1) / 2
    observed = abs(sum(rank[: len(a)]) - mean)
    splits = list(itertools.combinations(range(len(z)), len(a)))
    return sum(abs(sum(rank[i] for i in left) - mean) >= observed for left in splits) / len(splits)


CASES = [
    ([7, 8, 9, 9, 10], [9, 10, 10, 11, 12], "ratio"),
    ([7, 8, 9, INF, INF], [9, 10, 10, 11, INF], "ratio"),  # seeds that never stayed at the threshold
    ([INF, INF, INF, 5], [INF, INF, 6], "ratio"),  # both medians infinite
    ([3, 3, 3], [3, 3, 3, 3], "ratio"),  # all tied: p = 1
    ([86.1, 85.7, 86.6, 86.0, 85.9], [87.2, 86.8, 87.5, 87.0, 86.2], "difference"),
    ([1.5, 2.5, 2.0, 3.0, 2.2, 2.8], [2.1, 2.9, 3.3, 2.4], "difference"),
]


@pytest.mark.parametrize("a, b, kind", CASES)
def test_exact_permutation_p_value_equals_brute_force(a, b, kind):
    p, method, splits = permutation_p_value(a, b)
    assert method == "exact" and splits == math.comb(len(a) + len(b), len(a))
    assert p == _brute_p(a, b)  # the same count over the same number of splits


def test_midranks():
    assert midranks([3, INF, 1, 3, INF, 2]).tolist() == [3.5, 5.5, 1, 3.5, 5.5, 2]


def test_fully_separated_seeds_give_the_smallest_exact_p():
    """5 vs 5 seeds, every value of one below every value of the other: only the observed split and its mirror
    are that extreme, p = 2 / C(10, 5) = 2 / 252, the same with ties inside each group and infinite values."""
    assert permutation_p_value([5, 6, 6, 7, 7], [10, 11, 11, 12, 13]) == (2 / 252, "exact", 252)
    assert permutation_p_value([10, INF, INF, 12, 13], [5, 6, 6, 7, 7])[0] == 2 / 252


def test_monte_carlo_p_value_agrees_with_the_exact_one():
    a, b = [7, 8, 9, 9, 10, 12, INF], [9, 10, 10, 11, 12, 13]
    exact, _, _ = permutation_p_value(a, b)
    mc, method, count = permutation_p_value(a, b, max_exact=10, permutations=4000)
    assert method == "monte-carlo" and count == 4000
    # (1 + hits) / (1 + M) estimates p with standard error sqrt(p(1-p)/M): allow 5 of them and the +1
    assert abs(mc - exact) <= 5 * math.sqrt(exact * (1 - exact) / count) + 1 / count


def test_p_value_is_valid_under_the_null():
    """Seeds of both methods drawn from one distribution: P(p <= 0.05) is at most 0.05 (a permutation test is
    exact, conservative with ties); 400 draws put 3 standard errors at 0.033."""
    rng = np.random.default_rng(1)
    ps = [permutation_p_value(*rng.normal(10, 1, (2, 5)))[0] for _ in range(400)]
    assert np.mean(np.array(ps) <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    # and it has power: a shift of 3 standard deviations is found nearly always
    shifted = [permutation_p_value(rng.normal(10, 1, 5), rng.normal(13, 1, 5))[0] for _ in range(50)]
    assert np.mean(np.array(shifted) <= 0.05) >= 0.9


@pytest.mark.parametrize("a, b, kind", CASES)
def test_bootstrap_interval_equals_an_independent_resampling(a, b, kind):
    """Same generator, same draw order (the focus's index array first, then the baseline's), the statistic
    coded per resample in plain Python, numpy's percentiles."""
    rng = np.random.default_rng(0)
    ia = rng.integers(0, len(a), size=(RESAMPLES, len(a)))
    ib = rng.integers(0, len(b), size=(RESAMPLES, len(b)))
    values = []
    for ra, rb in zip(ia.tolist(), ib.tolist()):
        x, y = statistics.median([a[i] for i in ra]), statistics.median([b[i] for i in rb])
        values.append(_ratio(x, y) if kind == "ratio" else x - y)
    lo = np.percentile(values, 2.5, method="lower")
    hi = np.percentile(values, 97.5, method="higher")
    got = interval(a, b, median_ratio if kind == "ratio" else median_difference)
    # medians of the same values, one division or subtraction each: a few roundings apart at most
    assert got == pytest.approx((lo, hi), rel=4 * np.finfo(float).eps, abs=0)


def test_bootstrap_interval_contains_the_estimate_and_says_when_a_median_can_be_infinite():
    a, b = [7, 8, 9, 9, 10], [9, 10, 10, 11, 12]
    lo, hi = interval(a, b)
    assert lo <= float(median_ratio(np.array(a), np.array(b))) <= hi < INF
    assert interval([3, 3, 3], [3, 3]) == (1.0, 1.0)
    # 2 of 5 focus seeds never reached: a resample draws 3+ of them with probability ~0.32 > 2.5%
    lo, hi = interval([7, 8, 9, INF, INF], [9, 10, 10, 11, 12])
    assert lo < 1 and hi == INF


def test_ratio_of_edge_cases():
    assert ratio_of([6, INF, INF, 0, 6, 0], [3, 3, INF, 0, INF, 3]).tolist() == [2.0, INF, 1.0, 1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------------------
# the verdict


def _data(**methods):
    return {m: {"seeds": list(range(len(v[0]))), "sustained": v[0], "test_acc": v[1], "train_loss": [0.1] * len(v[0])}
            for m, v in methods.items()}


def test_baseline_is_the_fastest_other_method_and_not_a_variant_of_the_focus():
    data = _data(**{"standard": ([10, 11, 12], [0.9] * 3), "fixed-etf": ([8, 9, 9], [0.9] * 3),
                    "nearest-etf": ([7, 8, 9], [0.88, 0.89, 0.87]), "frozen": ([5, 5, 5], [0.9] * 3)})
    v = build_verdict(data, "nearest-etf", 0.99, {"frozen": "nearest-etf"})
    assert (v["method"], v["baseline"], v["candidates"]) == ("nearest-etf", "fixed-etf", ["standard", "fixed-etf"])
    assert v["ratio"] == pytest.approx(8 / 9) and v["median"] == {"nearest-etf": 8.0, "fixed-etf": 9.0}
    assert v["p_value"] == _brute_p([7, 8, 9], [8, 9, 9])
    assert v["ci95"] == pytest.approx(list(interval([7, 8, 9], [8, 9, 9])))
    assert v["seeds"] == {"nearest-etf": [0, 1, 2], "fixed-etf": [0, 1, 2]} and v["metric"] == "sustained"
    acc = v["test_acc"]  # in points: 88 - 90
    assert acc["difference"] == pytest.approx(-2.0) and acc["median"] == {"nearest-etf": 88.0, "fixed-etf": 90.0}
    assert acc["p_value"] == _brute_p([88, 89, 87], [90, 90, 90])
    assert build_verdict(data, "frozen", 0.99, {"frozen": "nearest-etf"})["baseline"] == "fixed-etf"
    assert build_verdict(_data(**{"nearest-etf": ([1], [0.5])}), "nearest-etf", 0.99) is None


def test_seeds_that_never_reach_enter_as_infinite_epochs():
    v = build_verdict(_data(**{"standard": ([9, 10, 10, 11, 12], [None] * 5),
                               "nearest-etf": ([7, 8, INF, INF, INF], [None] * 5)}), "nearest-etf", 0.99)
    assert v["ratio"] is None and v["median"]["nearest-etf"] is None  # None: infinite
    assert v["never"] == {"nearest-etf": 3, "standard": 0}
    assert v["ci95"][1] is None and 0 < v["p_value"] <= 1
    assert v["p_value"] == _brute_p([7, 8, INF, INF, INF], [9, 10, 10, 11, 12])
    assert "not compared" not in json.dumps(v) and "why" in v["test_acc"]  # no test split: said, not computed
    # the baseline's median infinite: the focus is infinitely faster (ratio 0)
    v = build_verdict(_data(**{"standard": ([9, INF, INF], [0.8] * 3), "nearest-etf": ([7, 8, 9], [0.8] * 3)}),
                      "nearest-etf", 0.99)
    assert v["ratio"] == 0.0 and v["median"]["standard"] is None


def test_resolve_focus():
    assert resolve_focus("auto", ["standard", "nearest-etf"]) == "nearest-etf"
    assert resolve_focus("auto", ["standard", "fixed-etf"]) is None
    assert resolve_focus("none", ["nearest-etf"]) is None and resolve_focus(None, ["nearest-etf"]) is None
    assert resolve_focus("fixed-etf", ["standard", "fixed-etf"]) == "fixed-etf"
    with pytest.raises(ValueError, match="focus 'x'"):
        resolve_focus("x", ["standard"])


# ----------------------------------------------------------------------------------------------------
# in the report


def _write(root, method, seed, accs, test_acc):
    d = root / "runs" / method / f"seed-{seed}"
    d.mkdir(parents=True)
    recs = [{"epoch": e, "wall_s": float(e), "train_acc": a, "train_loss": 1 - a, "test_acc": test_acc}
            for e, a in enumerate(accs)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_report_opens_with_the_verdict_on_sustained_epochs(tmp_path, monkeypatch):
    """nearest-etf touches 99 % at epoch 1 and falls back on every seed: first hit says it is 2x faster, the
    verdict (sustained) says it is slower."""
    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: [])  # figures are not what this checks
    for s in range(4):
        _write(tmp_path, "standard", s, [0.5, 0.9, 0.995, 0.996, 0.997, 0.998], 0.90 + 0.002 * s)
        _write(tmp_path, "nearest-etf", s, [0.5, 0.995, 0.7, 0.8, 0.999, 0.999], 0.88 + 0.002 * s)
    summary = write_report(tmp_path)
    v = summary["verdict"]
    kept = {m: summary["methods"][m]["sustained"]["train_acc"]["epoch"]["per_seed"] for m in v["seeds"]}
    assert kept == {"nearest-etf": [4, 4, 4, 4], "standard": [2, 2, 2, 2]}
    assert (v["method"], v["baseline"], v["ratio"]) == ("nearest-etf", "standard", 2.0)
    assert v["p_value"] == _brute_p([4] * 4, [2] * 4) == 2 / 70
    assert v["test_acc"]["difference"] == pytest.approx(-2.0)
    assert json.loads((tmp_path / "summary.json").read_text())["verdict"] == v
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2].startswith("**Verdict**: `nearest-etf` needs **2.00×** the epochs of `standard`")
    assert "slower" in lines[2] and "permutation p = " in lines[2]
    assert lines[3].startswith("Final test accuracy: `nearest-etf` -2.00 points against `standard`")
    # --focus none: no verdict; a focus that is not reported: an error naming it
    assert write_report(tmp_path, focus="none")["verdict"] is None
    assert not (tmp_path / "report.md").read_text().splitlines()[2].startswith("**Verdict**")
    with pytest.raises(ValueError, match="focus 'fixed-etf'"):
        write_report(tmp_path, focus="fixed-etf")
    assert write_report(tmp_path, focus="standard")["verdict"]["baseline"] == "nearest-etf"


# ----------------------------------------------------------------------------------------------------
# the verdict in words: infinite and zero medians, too few seeds, left-out seeds


def _strict(obj):
    """The object as strict JSON text and back: NaN or Infinity tokens raise."""
    from ncguide.experiments.files import json_text

    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(json_text(obj), parse_constant=refuse)


def _verdict(focus, base, acc_focus=None, acc_base=None, **extra):
    data = _data(**{"standard": (base, acc_base or [0.9] * len(base)),
                    "nearest-etf": (focus, acc_focus or [0.9] * len(focus))})
    for m, more in extra.items():
        data[m.replace("_", "-")].update(more)
    v = build_verdict(data, "nearest-etf", 0.99)
    assert _strict(v) == v  # strict JSON, and None (not NaN) where a value is infinite
    return v, verdict_lines(v)


def test_focus_never_sustained_reads_as_slower_with_an_infinite_interval():
    v, lines = _verdict([INF] * 5, [3] * 5)
    assert v["ratio"] is None and v["ci95"] == [None, None] and v["focus_never"] and not v["baseline_never"]
    assert v["reading"] == "higher" and v["p_value"] == 2 / 252
    assert "the median seed of `nearest-etf` never stays at training accuracy ≥ 99%" in lines[0]
    assert "that of `standard` (the fastest other method) does from epoch 3 (ratio ∞)" in lines[0]
    assert "95% interval ∞–∞ (slower: the whole interval lies above 1)" in lines[0]
    assert "includes 1" not in lines[0] and "inf" not in lines[0]


def test_baseline_at_the_threshold_from_epoch_0_is_not_read_as_the_focus_never_getting_there():
    v, lines = _verdict([3, 3, 3], [0, 0, 0])
    assert v["ratio"] is None and v["median"] == {"nearest-etf": 3.0, "standard": 0.0}
    assert not v["focus_never"] and not v["baseline_never"]
    assert "never" not in lines[0]
    assert "`standard` is at training accuracy ≥ 99% from epoch 0, before any training, `nearest-etf` from epoch 3" \
        in lines[0]
    assert "(median seeds; `standard` is the fastest other method): ratio ∞, as any ratio to 0 epochs, so the " \
           "threshold is too low for a ratio of epochs to measure speed" in lines[0]


def test_baseline_never_sustained_reads_as_faster_with_ratio_0():
    v, lines = _verdict([3] * 5, [INF] * 5)
    assert v["ratio"] == 0.0 and v["baseline_never"] and not v["focus_never"] and v["reading"] == "lower"
    assert "the median seed of `nearest-etf` stays at training accuracy ≥ 99% from epoch 3" in lines[0]
    assert "that of `standard` (the fastest other method) never does within the epochs run (ratio 0)" in lines[0]
    assert "0.00×" not in lines[0] and "faster: the whole interval lies below 1" in lines[0]


def test_neither_sustained_says_the_runs_cannot_compare_speeds():
    v, lines = _verdict([INF] * 4, [INF, INF, INF, 5])
    assert v["ratio"] == 1.0 and v["focus_never"] and v["baseline_never"] and v["reading"] == "neither reached"
    assert "the median seed of neither `nearest-etf` nor `standard`" in lines[0]
    assert "neither method got there, so these runs cannot compare speeds" in lines[0]


def test_a_finite_ratio_reads_as_before():
    v, lines = _verdict([7, 8, 8, 9, 9], [10, 11, 11, 12, 13])
    assert v["ratio"] == pytest.approx(8 / 11) and v["reading"] == "lower"
    assert lines[0].startswith("**Verdict**: `nearest-etf` needs **0.73×** the epochs of `standard`")
    assert "faster: the whole interval lies below 1" in lines[0] and "cannot reach" not in lines[0]


def _brute_smallest_p(a, b) -> float:
    """The smallest exact p-value over every way the pooled values of ``a`` and ``b`` could fall to the two
    methods (each split taken as the observed one), by brute force."""
    z = list(a) + list(b)
    return min(_brute_p([z[i] for i in left], [z[i] for i in range(len(z)) if i not in left])
               for left in itertools.combinations(range(len(z)), len(a)))


@pytest.mark.parametrize("n_a, n_b", [(1, 1), (1, 3), (2, 2), (2, 3), (3, 3), (3, 4), (4, 4)])
def test_smallest_p_value_without_ties_is_two_over_the_number_of_splits(n_a, n_b):
    a, b = [10.0 * i for i in range(n_a)], [10.0 * i + 5 for i in range(n_b)]  # distinct values
    assert smallest_p_value(a, b) == pytest.approx(_brute_smallest_p(a, b), rel=1e-15)
    assert smallest_p_value(a, b) == pytest.approx(min(1.0, 2 / math.comb(n_a + n_b, n_a)), rel=1e-15)


@pytest.mark.parametrize("a, b", [([3, 4], [5, 6, 7, 5, 6]), ([4, 4, 5], [4, 6, 6]), ([3, 3, 3], [3, 3, 3, 3])])
def test_smallest_p_value_with_ties_is_the_brute_force_minimum(a, b):
    """Ties can break the mirror symmetry: 2 vs 5 seeds with ties in the larger group reach p = 1/21, below the
    2/21 of distinct values, so "cannot reach p < 0.05" must be judged on the values."""
    assert smallest_p_value(a, b) == pytest.approx(_brute_smallest_p(a, b), rel=1e-15)
    assert permutation_p_value(a, b)[0] >= smallest_p_value(a, b)
    if a == [3, 4]:
        assert smallest_p_value(a, b) == pytest.approx(1 / 21) and permutation_p_value(a, b)[0] == pytest.approx(1 / 21)
        _, lines = _verdict(a, b)
        assert "cannot reach" not in lines[0] and "p = 0.048 (2 vs 5 seeds)" in lines[0]


@pytest.mark.parametrize("n, interval, floor", [(1, False, 1.0), (2, False, 1 / 3), (3, True, 0.1), (4, True, None)])
def test_too_few_seeds_give_no_interval_and_say_what_p_they_can_reach(n, interval, floor):
    """Every seed of the focus faster than every seed of the baseline: with 1 or 2 seeds a method no interval; the
    clause on p < 0.05 while 2 / C(2n, n) > 0.05 (3 vs 3: 0.1), not from 4 vs 4 (0.029)."""
    v, lines = _verdict([3 + i for i in range(n)], [10 + i for i in range(n)],
                        [0.8 + 0.01 * i for i in range(n)], [0.9 + 0.01 * i for i in range(n)])
    assert (v["ci95"] is not None) == interval and v["min_p_value"] == pytest.approx(2 / math.comb(2 * n, n))
    assert v["p_value"] == pytest.approx(v["min_p_value"])  # the most extreme split there is
    if not interval:
        assert v["reading"] == "too few seeds" and v["test_acc"]["ci95"] is None
        assert f"no interval: too few seeds ({n} vs {n}; a bootstrap interval needs at least 3 per method)" in lines[0]
        assert "whole interval" not in lines[0] and "whole interval" not in lines[1]
    if floor is None:
        assert "cannot reach" not in lines[0] + lines[1]
    else:
        words = f"({n} vs {n} seeds; these seeds cannot reach p < 0.05: with these values the exact test gives at " \
                f"least {floor:.2g})"
        assert words in lines[0] and words in lines[1]


def test_the_baseline_choice_is_named_as_not_accounted_for():
    _, lines = _verdict([7, 8, 9], [8, 9, 10])
    assert "The baseline is the fastest other method on these same seeds, a choice the interval and p-value do not " \
           "account for" in lines[2]


def test_a_diverged_seed_is_left_out_of_the_test_accuracy_comparison():
    """The diverged seed's last (pre-divergence) test accuracy is the highest of all; it must not count."""
    focus_acc = [0.80, 0.81, 0.82, 0.99]
    v, lines = _verdict([INF, 5, 6, 7], [5, 6, 7, 8], focus_acc, [0.85, 0.86, 0.87, 0.88],
                        nearest_etf={"diverged": [0]})
    acc = v["test_acc"]
    assert acc["seeds"] == {"nearest-etf": [1, 2, 3], "standard": [0, 1, 2, 3]}
    assert acc["median"]["nearest-etf"] == pytest.approx(100 * statistics.median(focus_acc[1:]))
    assert acc["p_value"] == _brute_p([81, 82, 99], [85, 86, 87, 88])
    assert acc["left_out"]["nearest-etf"] == {"diverged": [0], "no_value": []}
    assert "(left out: `nearest-etf`: seed 0 diverged, so its last test accuracy predates the divergence)" in lines[1]


def test_missing_test_accuracies_are_said_for_what_they_are():
    # no test split (the UFM): null for every seed
    v, lines = _verdict([5, 6, 7], [6, 7, 8], [None] * 3, [None] * 3)
    assert "the data set has no test split" in v["test_acc"]["why"] and lines[1].startswith(
        "Final test accuracy: not compared: no seed has a final test accuracy")
    # one seed's value is not a number: left out and named, the rest compared
    v, lines = _verdict([5, 6, 7, 8], [6, 7, 8, 9], [0.8, math.nan, 0.82, 0.83], [0.8] * 4)
    assert v["test_acc"]["left_out"]["nearest-etf"] == {"diverged": [], "no_value": [1]}
    assert v["test_acc"]["seeds"]["nearest-etf"] == [0, 2, 3] and "no test split" not in lines[1]
    assert "seed 1 without a finite final test accuracy (null or NaN in the log)" in lines[1]
    # every seed of one method diverged
    v, lines = _verdict([INF] * 3, [6, 7, 8], [0.8] * 3, [0.8] * 3, nearest_etf={"diverged": [0, 1, 2]})
    assert v["test_acc"]["why"].startswith("no seed of `nearest-etf` has a final test accuracy to compare (seeds "
                                           "0, 1, 2 diverged")


def test_report_cautions_when_runs_differ_in_length(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: [])
    for s in range(3):
        _write(tmp_path, "standard", s, [0.5, 0.995, 0.996, 0.997], 0.9)
        _write(tmp_path, "nearest-etf", s, [0.5, 0.995], 0.9)
        for method, epochs in (("standard", 3), ("nearest-etf", 1)):
            (tmp_path / "runs" / method / f"seed-{s}" / "config.json").write_text(
                json.dumps({"method": method, "seed": s, "epochs": epochs, "eval_every": 1}))
    summary = write_report(tmp_path)
    assert summary["run_lengths"] == {"standard": [[3, 1]], "nearest-etf": [[1, 1]]}
    md = (tmp_path / "report.md").read_text()
    assert "Caution: the runs differ in length (`standard` 3 epochs evaluated every 1; `nearest-etf` 1 epoch " \
           "evaluated every 1)" in md
    assert length_caution({"standard": [[3, 1]], "nearest-etf": [[3, 1]]}) is None

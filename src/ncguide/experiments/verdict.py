"""The verdict of a comparison: one method (the *focus*) against the best other one, with its uncertainty.

Two numbers, each from the report seeds of the two methods (unpaired: a seed number means nothing across
methods), each with a bootstrap interval and a permutation-test p-value:

- the ratio of median *sustained* epochs to the training-accuracy threshold, ``R = med(a) / med(b)`` (focus
  ``a``, baseline ``b``). A seed that never stays at the threshold to the end of its run counts as ``+inf``
  epochs, so a median is infinite when half or more of the seeds never got there; then ``R = inf`` (the
  focus's median is infinite) or ``R = 0`` (the baseline's). When both medians are equal — both infinite
  included: neither method got there within the budget — ``R = 1``;
- the difference of median final test accuracies, ``D = med(a) - med(b)``, in percentage points.

Interval: the percentile bootstrap. Each method's seeds are resampled with replacement, independently,
``RESAMPLES`` times from ``numpy.random.default_rng(RNG_SEED)`` (first all of the focus's index draws, an
array ``(RESAMPLES, n_a)``, then the baseline's ``(RESAMPLES, n_b)``), the statistic is computed for each
resample, and the interval is ``[q_2.5, q_97.5]`` of those values as order statistics (numpy's ``lower``
and ``higher`` percentile methods: no interpolation toward an infinite value, and never narrower than the
interpolated interval). An infinite end means that in more than 2.5% of the resamples a median was
infinite. With fewer than ``MIN_INTERVAL_SEEDS`` (3) seeds for either method there is no interval: the
median of a resample of one or two seeds takes at most three values, so its "interval" is just the range of
the observations (a point when they agree), not a 95% statement.

p-value: two-sided permutation test of "both methods' seeds come from one distribution", on ranks (the
Wilcoxon-Mann-Whitney statistic): pool the ``n_a + n_b`` values and rank them (``inf`` last; tied values
share the mean of their ranks), split the ranks into groups of ``n_a`` and ``n_b`` in every possible way
(exactly, when there are at most ``MAX_EXACT_SPLITS`` splits: 252 for 5 + 5 seeds, 12,870 for 8 + 8) or
``PERMUTATIONS`` random ways (seeded; then ``p = (1 + hits) / (1 + PERMUTATIONS)``), and count the splits
whose rank sum of the first group lies at least as far from its mean ``n_a (n_a + n_b + 1) / 2`` as the
observed one. Ranks, not medians: with so few seeds a test of the medians is coarse — 5 + 5 seeds where
every seed of one method beats every seed of the other can give p ≈ 0.12 (many splits share the middle
values), where ranks give ``2 / 252`` — and ranks take infinite values as they come. The doubled
distances are whole numbers (ranks are multiples of 1/2), so the comparison is exact.

The smallest p-value the exact test can give for the pooled values, whichever seeds they came from, is
the share of splits as extreme as the most extreme one (:func:`smallest_p_value`): ``2 / C(n_a + n_b,
n_a)`` when no two values tie (1 for 1 vs 1, 1/3 for 2 vs 2, 0.1 for 3 vs 3, 0.029 for 4 vs 4), as low as
``1 / C(...)`` with ties. When it is above 0.05 the report says that these seeds cannot reach p < 0.05.

The baseline is the other method with the lowest median sustained epochs (ties: the lower median final
training loss, then the report's order); variants of the focus's own method (the same ``method:``) are
not baselines. The baseline is picked on the same report seeds that the interval and p-value then use, and
neither accounts for that choice: with several other methods, the fastest of them on these seeds is
favoured (the report says so).

The test-accuracy comparison leaves out a seed that diverged (its last record predates the divergence, so
its accuracy is not that of a trained model) and a seed without a finite final test accuracy (``null``: a
data set without a test split, such as the UFM; NaN in an old log), and lists them.

Every sentence of :func:`verdict_lines` holds for infinite medians too: a focus that never stays at the
threshold (ratio ``∞``), a baseline that never does (ratio 0), one already there at epoch 0 before any
training (the threshold is then too low to compare speeds), neither getting there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "RESAMPLES",
    "RNG_SEED",
    "MIN_INTERVAL_SEEDS",
    "MAX_EXACT_SPLITS",
    "PERMUTATIONS",
    "ratio_of",
    "median_ratio",
    "median_difference",
    "bootstrap_interval",
    "midranks",
    "permutation_p_value",
    "compare_two",
    "smallest_p_value",
    "resolve_focus",
    "build_verdict",
    "verdict_lines",
    "length_caution",
]

RESAMPLES = 10_000
RNG_SEED = 0
MAX_EXACT_SPLITS = 20_000
PERMUTATIONS = 20_000
DEFAULT_FOCUS = "nearest-etf"
MIN_INTERVAL_SEEDS = 3  # fewer seeds a method: no interval (module docstring)


# ----------------------------------------------------------------------------------------------------
# statistics (each maps arrays (..., n_a) and (..., n_b) to an array (...))


def ratio_of(a, b) -> np.ndarray:
    """``a / b`` elementwise for values in ``[0, inf]``, with ``a / b = 1`` where ``a == b`` (``inf / inf``,
    ``0 / 0``), ``x / 0 = inf`` and ``x / inf = 0``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a == b, 1.0, a / b)


def median_ratio(a, b) -> np.ndarray:
    """``ratio_of(median(a), median(b))`` over the last axis."""
    return ratio_of(np.median(a, axis=-1), np.median(b, axis=-1))


def median_difference(a, b) -> np.ndarray:
    """``median(a) - median(b)`` over the last axis."""
    return np.median(a, axis=-1) - np.median(b, axis=-1)


_STATISTICS: dict[str, Callable] = {"ratio": median_ratio, "difference": median_difference}


def bootstrap_interval(a: Sequence[float], b: Sequence[float], statistic: Callable = median_ratio,
                       resamples: int = RESAMPLES, seed: int = RNG_SEED) -> tuple[float, float]:
    """The percentile bootstrap 95% interval of ``statistic(a, b)`` (module docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(resamples, a.size))
    ib = rng.integers(0, b.size, size=(resamples, b.size))
    values = statistic(a[ia], b[ib])
    return float(np.percentile(values, 2.5, method="lower")), float(np.percentile(values, 97.5, method="higher"))


def midranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..N of ``values`` (``inf`` the largest), tied values sharing the mean of their ranks."""
    z = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(z, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # how many values lie below each distinct value
    return (below + (counts + 1) / 2)[inverse]


def permutation_p_value(a: Sequence[float], b: Sequence[float], max_exact: int = MAX_EXACT_SPLITS,
                        permutations: int = PERMUTATIONS, seed: int = RNG_SEED) -> tuple[float, str, int]:
    """Two-sided permutation p-value of the rank sums (module docstring) → ``(p, "exact" | "monte-carlo",
    number of splits)``."""
    ranks = midranks(np.concatenate([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)]))
    n, total = len(a), ranks.size
    # twice the distance of a's rank sum from its mean n(N+1)/2: whole numbers (ranks are halves), so exact
    centre = n * (total + 1)
    observed = abs(2 * ranks[:n].sum() - centre)
    splits = math.comb(total, n)
    if splits <= max_exact:
        left = np.array(list(itertools.combinations(range(total), n)), dtype=np.intp).reshape(splits, n)
        values = np.abs(2 * ranks[left].sum(axis=1) - centre)
        return float(np.mean(values >= observed)), "exact", splits
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((permutations, total)), axis=1)
    values = np.abs(2 * ranks[order[:, :n]].sum(axis=1) - centre)
    return float((1 + np.sum(values >= observed)) / (1 + permutations)), "monte-carlo", permutations


def compare_two(a: Sequence[float], b: Sequence[float], kind: str = "ratio") -> dict:
    """``{"estimate", "ci95": [lo, hi], "p_value", "permutation": {"method", "splits", "statistic"}}`` of the
    ratio or difference of medians of ``a`` and ``b`` (floats; infinite values stay infinite here)."""
    statistic = _STATISTICS[kind]
    estimate = float(statistic(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))
    lo, hi = bootstrap_interval(a, b, statistic)
    p, method, splits = permutation_p_value(a, b)
    return {"estimate": estimate, "ci95": [lo, hi], "p_value": p,
            "permutation": {"method": method, "splits": splits, "statistic": "rank sum (Wilcoxon-Mann-Whitney)"}}


# ----------------------------------------------------------------------------------------------------
# the verdict of a report


def resolve_focus(focus: str | None, methods: Sequence[str]) -> str | None:
    """``"auto"`` → ``nearest-etf`` when compared, else None; ``None``/``"none"`` → None; a method name must
    be among ``methods`` (``ValueError`` otherwise)."""
    if focus is None or focus == "none":
        return None
    if focus == "auto":
        return DEFAULT_FOCUS if DEFAULT_FOCUS in methods else None
    if focus not in methods:
        raise ValueError(f"focus {focus!r} is not a compared method ({', '.join(methods)}); give one of them, or "
                         "none for no verdict")
    return focus


def _median(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v[np.isnan(v)] = math.inf
    return float(np.median(v)) if v.size else math.inf


def _json(x: float) -> float | None:
    """+inf → None (the fields' docs say None stands for infinity; these values are never NaN)."""
    return float(x) if math.isfinite(x) else None


def smallest_p_value(a: Sequence[float], b: Sequence[float], max_exact: int = MAX_EXACT_SPLITS) -> float:
    """The smallest p-value :func:`permutation_p_value` can give for the pooled values of ``a`` and ``b``,
    whichever of them fell to which method: the share of splits as extreme as the most extreme one. Without
    ties that is ``2 / C(n_a + n_b, n_a)`` (a split and its mirror image); ties can make it ``1 / C(...)`` or
    more. Beyond ``max_exact`` splits (a Monte Carlo p-value): ``2 / C(n_a + n_b, n_a)``, far below 0.05."""
    n, total = len(a), len(a) + len(b)
    splits = math.comb(total, n)
    if splits > max_exact:
        return 2 / splits
    ranks = midranks(np.concatenate([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)]))
    left = np.array(list(itertools.combinations(range(total), n)), dtype=np.intp).reshape(splits, n)
    values = np.abs(2 * ranks[left].sum(axis=1) - n * (total + 1))
    return float(np.mean(values >= values.max()))


def _comparison(a: Sequence[float], b: Sequence[float], kind: str) -> dict:
    """``compare_two`` with the seeds' limits said: ``ci95`` None when either method has fewer than
    ``MIN_INTERVAL_SEEDS`` seeds, ``min_p_value`` (:func:`smallest_p_value`)."""
    out = compare_two(a, b, kind)
    if min(len(a), len(b)) < MIN_INTERVAL_SEEDS:
        out["ci95"] = None
    out["min_p_value"] = smallest_p_value(a, b)
    return out


def _reading(ci: list | None, pivot: float, a_never: bool = False, b_never: bool = False) -> str:
    """What an interval says, as one word of ``READINGS``: ``lower``/``higher`` than ``pivot`` over the whole
    interval, ``unresolved``, ``too few seeds`` (no interval), ``neither reached`` (both medians infinite)."""
    if a_never and b_never:
        return "neither reached"
    if ci is None:
        return "too few seeds"
    lo, hi = (math.inf if x is None else x for x in ci)
    return "lower" if hi < pivot else "higher" if lo > pivot else "unresolved"


def build_verdict(data: Mapping[str, Mapping[str, Sequence]], focus: str, threshold: float,
                  families: Mapping[str, str] | None = None) -> dict | None:
    """The verdict of ``focus`` against the best other method of ``data`` (module docstring).

    ``data``: ``{method: {"seeds": [...], "sustained": [epochs, inf for never], "test_acc": [fraction, None
    or NaN], "train_loss": [final], "diverged": [seeds that diverged] (optional)}}`` in the report's order;
    ``families``: ``{method: its base method}`` (a variant's ``method:``). Returns None when no other method
    qualifies, else ``{"metric": "sustained", "threshold": {...}, "method", "baseline", "candidates", "seeds":
    {method: [seeds]}, "median": {method: epochs or None}, "never": {method: count}, "focus_never",
    "baseline_never", "ratio", "ci95": [lo, hi] or None, "reading", "p_value", "min_p_value", "bootstrap":
    {...}, "permutation": {...}, "test_acc": {...}}``. None in ``ratio``, ``median`` and the ends of ``ci95``
    stands for +infinity (they are never missing or NaN); ``ci95`` itself is None when a method has fewer than
    ``MIN_INTERVAL_SEEDS`` seeds. ``test_acc``: ``{"difference" (points), "median" (%), "ci95", "reading",
    "p_value", "min_p_value", "permutation", "seeds": {method: [seeds compared]}, "left_out": {method:
    {"diverged": [seeds], "no_value": [seeds]}}}`` or ``{"why", "left_out"}``."""
    families = families or {}
    family = families.get(focus, focus)
    candidates = [m for m in data if m != focus and families.get(m, m) != family]
    if focus not in data or not candidates:
        return None

    def rank(m: str) -> tuple:
        return _median(data[m]["sustained"]), _median(data[m].get("train_loss", [])), list(data).index(m)

    base = min(candidates, key=rank)
    a = np.asarray(data[focus]["sustained"], dtype=np.float64)
    b = np.asarray(data[base]["sustained"], dtype=np.float64)
    speed = _comparison(a, b, "ratio")
    a_never, b_never = math.isinf(_median(a)), math.isinf(_median(b))
    verdict = {
        "metric": "sustained",
        "threshold": {"key": "train_acc", "op": ">=", "value": threshold},
        "method": focus, "baseline": base, "candidates": candidates,
        "seeds": {focus: list(data[focus]["seeds"]), base: list(data[base]["seeds"])},
        "median": {focus: _json(_median(a)), base: _json(_median(b))},
        "never": {focus: int(np.sum(~np.isfinite(a))), base: int(np.sum(~np.isfinite(b)))},
        "focus_never": a_never, "baseline_never": b_never,
        "ratio": _json(speed["estimate"]),
        "ci95": None if speed["ci95"] is None else [_json(x) for x in speed["ci95"]],
        "reading": _reading(speed["ci95"], 1.0, a_never, b_never),
        "p_value": speed["p_value"], "min_p_value": speed["min_p_value"],
        "bootstrap": {"resamples": RESAMPLES, "rng_seed": RNG_SEED, "interval": "percentile 2.5-97.5",
                      "min_seeds": MIN_INTERVAL_SEEDS},
        "permutation": speed["permutation"],
    }
    verdict["test_acc"] = _test_accuracy(data, focus, base)
    return verdict


def _test_accuracy(data: Mapping[str, Mapping[str, Sequence]], a: str, b: str) -> dict:
    """The ``test_acc`` entry of the verdict: final test accuracies in percent, a diverged seed and a seed
    without a finite value (``None``: a data set without a test split; NaN) left out and listed."""
    accs: dict[str, dict[int, float]] = {}
    left_out: dict[str, dict[str, list]] = {}
    for m in (a, b):
        diverged = set(data[m].get("diverged", ()))
        kept, out = {}, {"diverged": [], "no_value": []}
        for seed, x in zip(data[m]["seeds"], data[m].get("test_acc", [])):
            value = math.nan if x is None else float(x)
            if seed in diverged:
                out["diverged"].append(seed)
            elif not math.isfinite(value):
                out["no_value"].append(seed)
            else:
                kept[seed] = 100 * value
        accs[m], left_out[m] = kept, out
    empty = [m for m in (a, b) if not accs[m]]
    if empty:
        if all(not left_out[m]["diverged"] for m in (a, b)) and all(not accs[m] for m in (a, b)):
            why = ("no seed has a final test accuracy (its log records null: the data set has no test split, as "
                   "the UFM, or the value was not a finite number)")
        else:
            why = "; ".join(f"no seed of `{m}` has a final test accuracy to compare ({_left_out_words(left_out[m])})"
                            for m in empty)
        return {"why": why, "left_out": left_out}
    acc = _comparison(list(accs[a].values()), list(accs[b].values()), "difference")
    return {"difference": acc["estimate"], "median": {m: float(np.median(list(v.values()))) for m, v in accs.items()},
            "ci95": acc["ci95"], "reading": _reading(acc["ci95"], 0.0), "p_value": acc["p_value"],
            "min_p_value": acc["min_p_value"], "permutation": acc["permutation"],
            "seeds": {m: list(v) for m, v in accs.items()}, "left_out": left_out}


def _left_out_words(out: Mapping[str, list]) -> str:
    """Why seeds were left out of the test-accuracy comparison, in words."""
    parts = []
    if out["diverged"]:
        many = len(out["diverged"]) > 1
        parts.append(f"seed{'s' if many else ''} {_seeds(out['diverged'])} diverged, so {'their' if many else 'its'} "
                     "last test accuracy predates the divergence")
    if out["no_value"]:
        parts.append(f"seed{'s' if len(out['no_value']) > 1 else ''} {_seeds(out['no_value'])} without a finite "
                     "final test accuracy (null or NaN in the log)")
    return "; ".join(parts)


def _seeds(seeds: Sequence) -> str:
    return ", ".join(str(s) for s in seeds)


# ----------------------------------------------------------------------------------------------------
# the verdict in words


def _num_text(x: float | None) -> str:
    """A ratio or interval end: None (infinity) as ∞."""
    return "∞" if x is None or math.isinf(x) else f"{x:.2f}"


def _epochs(x: float | None) -> str:
    return "never" if x is None else f"{x:g}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


_SPEED_READING = {
    "lower": "faster: the whole interval lies below 1",
    "higher": "slower: the whole interval lies above 1",
    "unresolved": "the interval includes 1: these seeds do not resolve a difference",
    "neither reached": "neither method got there, so these runs cannot compare speeds",
}
_ACC_READING = {
    "higher": "higher: the whole interval lies above 0",
    "lower": "lower: the whole interval lies below 0",
    "unresolved": "the interval includes 0: these seeds do not resolve a difference",
}


def _interval_words(ci: list | None, reading: str, n: tuple[int, int], signed: bool = False) -> str:
    """``95% interval lo–hi (reading)``, or why there is none."""
    if ci is None:
        return (f"no interval: too few seeds ({n[0]} vs {n[1]}; a bootstrap interval needs at least "
                f"{MIN_INTERVAL_SEEDS} per method)")
    lo, hi = ci
    ends = f"{lo:+.2f} to {hi:+.2f}" if signed else f"{_num_text(lo)}–{_num_text(hi)}"
    return f"95% interval {ends} ({(_ACC_READING if signed else _SPEED_READING).get(reading, reading)})"


def _p_words(p: float, floor: float, n: tuple[int, int]) -> str:
    """``p = X (n vs m seeds)``, and when the seeds cannot reach p < 0.05, that they cannot."""
    cannot = (f"; these seeds cannot reach p < 0.05: with these values the exact test gives at least {_p(floor)}"
              if floor > 0.05 else "")
    return f"p = {_p(p)} ({n[0]} vs {n[1]} seeds{cannot})"


def _speed_words(a: str, b: str, ma: float | None, mb: float | None, ratio: float | None, thr: str) -> str:
    """The first sentence of the verdict: how the two medians compare, true for infinite and zero medians."""
    other = f"`{b}` (the fastest other method)"
    if ma is None and mb is None:
        return (f"the median seed of neither `{a}` nor {other} stays at {thr} within the epochs run (the ratio "
                "counts as 1)")
    if ma is None:
        return (f"the median seed of `{a}` never stays at {thr} within the epochs run; that of {other} does from "
                f"epoch {_epochs(mb)} (ratio ∞)")
    if mb is None:
        return (f"the median seed of `{a}` stays at {thr} from epoch {_epochs(ma)}; that of {other} never does "
                "within the epochs run (ratio 0)")
    if ma == 0 or mb == 0:
        zero = [f"`{m}`" for m, x in ((a, ma), (b, mb)) if x == 0]
        late = "" if len(zero) == 2 else (f", `{b}` from epoch {_epochs(mb)}" if ma == 0
                                         else f", `{a}` from epoch {_epochs(ma)}")
        return (f"{' and '.join(zero)} {'are' if len(zero) == 2 else 'is'} at {thr} from epoch 0, before any "
                f"training{late} (median seeds; `{b}` is the fastest other method): ratio {_num_text(ratio)}, as "
                "any ratio to 0 epochs, so the threshold is too low for a ratio of epochs to measure speed")
    return (f"`{a}` needs **{_num_text(ratio)}×** the epochs of {other} to stay at {thr} (median {_epochs(ma)} vs "
            f"{_epochs(mb)} epochs)")


def verdict_lines(v: dict, edges: Mapping[str, Mapping[str, str | None]] | None = None) -> list[str]:
    """The verdict in plain words, the report's first lines (markdown)."""
    a, b = v["method"], v["baseline"]
    t = v["threshold"]
    thr = f"training accuracy ≥ {100 * t['value']:g}%"
    n = (len(v["seeds"][a]), len(v["seeds"][b]))
    words = _speed_words(a, b, v["median"][a], v["median"][b], v["ratio"], thr)
    reading = v.get("reading") or _reading(v["ci95"], 1.0, v["median"][a] is None, v["median"][b] is None)
    floor = v.get("min_p_value", 0.0)
    lines = [f"**Verdict**: {words}; {_interval_words(v['ci95'], reading, n)}, permutation "
             f"{_p_words(v['p_value'], floor, n)}."]
    acc = v.get("test_acc") or {}
    left = acc.get("left_out") or {}
    left_words = "; ".join(f"`{m}`: {_left_out_words(x)}" for m, x in left.items() if any(x.values()))
    if "difference" in acc:
        na = tuple(len(acc["seeds"][m]) for m in (a, b)) if "seeds" in acc else n
        lines.append(f"Final test accuracy: `{a}` {acc['difference']:+.2f} points against `{b}` (median "
                     f"{acc['median'][a]:.2f}% vs {acc['median'][b]:.2f}%), "
                     f"{_interval_words(acc['ci95'], acc.get('reading', ''), na, signed=True)}, "
                     f"{_p_words(acc['p_value'], acc.get('min_p_value', 0.0), na)}"
                     f"{f' (left out: {left_words})' if left_words else ''}.")
    else:
        lines.append(f"Final test accuracy: not compared: {acc.get('why', 'not available')}.")
    perm = v["permutation"]
    how = (f"exact over all {perm['splits']} splits of the seeds" if perm["method"] == "exact"
           else f"Monte Carlo over {perm['splits']} random splits")
    lines.append(f"A seed that never stays at the threshold to the end of its run counts as infinitely many epochs "
                 f"({v['never'][a]} of `{a}`'s, {v['never'][b]} of `{b}`'s). Intervals: percentile bootstrap, each "
                 f"method's seeds resampled with replacement ({v['bootstrap']['resamples']} resamples, RNG seed "
                 f"{v['bootstrap']['rng_seed']}; none with fewer than {MIN_INTERVAL_SEEDS} seeds a method); p: "
                 f"two-sided permutation test on ranks (Wilcoxon-Mann-Whitney), {how}. The baseline is the fastest "
                 "other method on these same seeds, a choice the interval and p-value do not account for (it "
                 "favours the baseline).")
    at = [f"`{m}` ({', '.join(f'{k} {e}' for k, e in (edges or {}).get(m, {}).items() if e)})" for m in (a, b)
          if any((edges or {}).get(m, {}).values())]
    if at:
        lines.append(f"Caution: {' and '.join(at)} selected at the grid's edge, so not necessarily at its best "
                     "setting.")
    return lines


def length_caution(lengths: Mapping[str, Sequence[Sequence[int]]]) -> str | None:
    """A caution line when the reported runs differ in length: ``lengths`` is ``{method: [[epochs, eval_every],
    ...]}`` (each distinct pair among its runs); None when every run has the same."""
    pairs = {tuple(x) for v in lengths.values() for x in v}
    if len(pairs) <= 1:
        return None
    words = "; ".join(f"`{m}` " + ", ".join(f"{e} epoch{'' if e == 1 else 's'} evaluated every {k}" for e, k in v)
                      for m, v in lengths.items())
    return (f"Caution: the runs differ in length ({words}), so their epochs to the threshold, and the verdict on "
            "them, compare unlike things: a shorter run has fewer epochs in which to fall back below it, and its "
            "schedule and evaluations differ.")

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
infinite.

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

The baseline is the other method with the lowest median sustained epochs (ties: the lower median final
training loss, then the report's order); variants of the focus's own method (the same ``method:``) are
not baselines.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "RESAMPLES",
    "RNG_SEED",
    "MAX_EXACT_SPLITS",
    "PERMUTATIONS",
    "ratio_of",
    "median_ratio",
    "median_difference",
    "bootstrap_interval",
    "midranks",
    "permutation_p_value",
    "compare_two",
    "resolve_focus",
    "build_verdict",
    "verdict_lines",
]

RESAMPLES = 10_000
RNG_SEED = 0
MAX_EXACT_SPLITS = 20_000
PERMUTATIONS = 20_000
DEFAULT_FOCUS = "nearest-etf"


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
    """inf and NaN → None (strict JSON; the fields' docs say what None stands for)."""
    return float(x) if math.isfinite(x) else None


def build_verdict(data: Mapping[str, Mapping[str, Sequence]], focus: str, threshold: float,
                  families: Mapping[str, str] | None = None) -> dict | None:
    """The verdict of ``focus`` against the best other method of ``data`` (module docstring).

    ``data``: ``{method: {"seeds": [...], "sustained": [epochs, inf for never], "test_acc": [fraction or
    None], "train_loss": [final]}}`` in the report's order; ``families``: ``{method: its base method}`` (a
    variant's ``method:``). Returns None when no other method qualifies, else ``{"metric": "sustained",
    "threshold": {...}, "method", "baseline", "candidates", "seeds": {method: [seeds]}, "median": {method:
    epochs or None}, "never": {method: count}, "ratio", "ci95": [lo, hi], "p_value", "bootstrap": {...},
    "permutation": {...}, "test_acc": {"difference" (points), "median" (%), "ci95", "p_value", "permutation"}
    or {"why": ...}}``; None in ``ratio``, ``ci95`` and ``median`` stands for infinity."""
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
    speed = compare_two(a, b, "ratio")
    verdict = {
        "metric": "sustained",
        "threshold": {"key": "train_acc", "op": ">=", "value": threshold},
        "method": focus, "baseline": base, "candidates": candidates,
        "seeds": {focus: list(data[focus]["seeds"]), base: list(data[base]["seeds"])},
        "median": {focus: _json(_median(a)), base: _json(_median(b))},
        "never": {focus: int(np.sum(~np.isfinite(a))), base: int(np.sum(~np.isfinite(b)))},
        "ratio": _json(speed["estimate"]), "ci95": [_json(x) for x in speed["ci95"]], "p_value": speed["p_value"],
        "bootstrap": {"resamples": RESAMPLES, "rng_seed": RNG_SEED, "interval": "percentile 2.5-97.5"},
        "permutation": speed["permutation"],
    }
    accs = {m: [math.nan if x is None else 100 * float(x) for x in data[m].get("test_acc", [])] for m in (focus, base)}
    if any(not v or any(math.isnan(x) for x in v) for v in accs.values()):
        verdict["test_acc"] = {"why": "no final test accuracy for every seed (a data set without a test split)"}
    else:
        acc = compare_two(accs[focus], accs[base], "difference")
        verdict["test_acc"] = {
            "difference": acc["estimate"], "median": {m: float(np.median(v)) for m, v in accs.items()},
            "ci95": acc["ci95"], "p_value": acc["p_value"], "permutation": acc["permutation"],
        }
    return verdict


def _times(x: float | None) -> str:
    return "inf" if x is None else f"{x:.2f}"


def _epochs(x: float | None) -> str:
    return "never" if x is None else f"{x:g}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def verdict_lines(v: dict, edges: Mapping[str, Mapping[str, str | None]] | None = None) -> list[str]:
    """The verdict in plain words, the report's first lines (markdown)."""
    a, b = v["method"], v["baseline"]
    t = v["threshold"]
    thr = f"training accuracy ≥ {100 * t['value']:g}%"
    lo, hi = v["ci95"]
    ratio = v["ratio"]
    if v["median"][a] is None and v["median"][b] is None:
        words = (f"the median seed of neither `{a}` nor `{b}` (the fastest other method) stays at {thr} within "
                 "the epochs run, so the ratio counts as 1")
    elif ratio is None:
        words = (f"the median seed of `{a}` never stays at {thr}; `{b}`'s (the fastest other method) does after "
                 f"{_epochs(v['median'][b])} epochs (ratio infinite)")
    else:
        words = (f"`{a}` needs **{_times(ratio)}×** the epochs of `{b}` (the fastest other method) to stay at {thr} "
                 f"(median {_epochs(v['median'][a])} vs {_epochs(v['median'][b])} epochs)")
    if hi is not None and hi < 1:
        reading = "faster: the whole interval lies below 1"
    elif lo is not None and lo > 1:
        reading = "slower: the whole interval lies above 1"
    else:
        reading = "the interval includes 1: these seeds do not resolve a difference"
    n = f"{len(v['seeds'][a])} vs {len(v['seeds'][b])} seeds"
    lines = [f"**Verdict**: {words}; 95% interval {_times(lo)}–{_times(hi)} ({reading}), permutation p = "
             f"{_p(v['p_value'])} ({n})."]
    acc = v.get("test_acc") or {}
    if "difference" in acc:
        lo, hi = acc["ci95"]
        side = "higher" if lo > 0 else "lower" if hi < 0 else "the interval includes 0"
        lines.append(f"Final test accuracy: `{a}` {acc['difference']:+.2f} points against `{b}` (median "
                     f"{acc['median'][a]:.2f}% vs {acc['median'][b]:.2f}%), 95% interval {lo:+.2f} to {hi:+.2f} "
                     f"({side}), p = {_p(acc['p_value'])}.")
    else:
        lines.append(f"Final test accuracy: not compared: {acc.get('why', 'not available')}.")
    perm = v["permutation"]
    how = (f"exact over all {perm['splits']} splits of the seeds" if perm["method"] == "exact"
           else f"Monte Carlo over {perm['splits']} random splits")
    lines.append(f"A seed that never stays at the threshold to the end of its run counts as infinitely many epochs "
                 f"({v['never'][a]} of `{a}`'s, {v['never'][b]} of `{b}`'s). Intervals: percentile bootstrap, each "
                 f"method's seeds resampled with replacement ({v['bootstrap']['resamples']} resamples, RNG seed "
                 f"{v['bootstrap']['rng_seed']}); p: two-sided permutation test on ranks (Wilcoxon-Mann-Whitney), "
                 f"{how}.")
    at = [f"`{m}` ({', '.join(f'{k} {e}' for k, e in (edges or {}).get(m, {}).items() if e)})" for m in (a, b)
          if any((edges or {}).get(m, {}).values())]
    if at:
        lines.append(f"Caution: {' and '.join(at)} selected at the grid's edge, so not necessarily at its best "
                     "setting.")
    return lines

"""How a tuned comparison picks each method's grid point, and whether that point sits at the grid's edge.

Selection metrics, each a *cost* of one run's log (lower is better), ``A`` = the training-accuracy threshold:

- ``sustained`` (the default): the first evaluated epoch ``e`` with ``train_acc >= A`` at ``e`` and at every
  later evaluation; a run whose last evaluation is below ``A`` never reached it for good (cost inf). A rate
  that touches ``A`` at epoch 1 and then falls back cannot win with it.
- ``first``: the first evaluated epoch with ``train_acc >= A`` (inf if none).
- ``auc``: the mean training error ``mean_e (1 - train_acc_e)`` over every evaluated epoch (epoch 0, before
  training, included: the same for every point of one method and data set).
- ``train_acc@E``: the training accuracy at epoch ``E >= 1`` (higher is better; its cost is the error
  ``1 - train_acc_E``; inf when epoch ``E`` was not evaluated).

A diverged run (its log stands as one record with ``train_acc`` NaN and ``train_loss`` inf) costs inf under
every metric. Per grid point the cost is the median over the selection seeds (inf counted as inf, so a
point whose median seed never got there ranks last); ties go to the lower median final training loss, then
to the earlier grid point.

Edges: on a numeric grid axis (two or more values, all numbers) a winner at the smallest value is at the
``"low"`` edge, at the largest at the ``"high"`` one; anywhere else, or on an axis of one value or of
non-numbers, ``None``. :func:`extend_axis` gives the value one step beyond an edge, by the first rule that
fits the axis's sorted values:

1. *1-3-10*: positive values that are successive terms of ..., 0.1, 0.3, 1, 3, 10, 30, ... (``{1, 3} ·
   10^k``; two or more of them): the next term of that sequence (``1e-3, 3e-3, 1e-2`` → ``3e-2`` and
   ``3e-4``);
2. *log-spaced*: positive values, and either three or more whose successive ratios are more even than
   their successive differences (max/min of the ratios <= max/min of the differences), or exactly two
   of which the larger is at least twice the smaller: the ratio of the two values at that end
   (``64, 128, 256`` → 512; ``1e-3, 1e-2, 0.1, 0.5`` → 2.5 and ``1e-4``);
3. otherwise *linear*: the difference of the two values at that end (``10, 11`` → 12 and 9; ``0, 1e-4,
   5e-4`` → ``9e-4``).

A float is rounded to 6 significant digits (readable folder names). An axis of whole numbers stays whole:
the nearest whole number, a half rounded toward the grid; a step that then lands on the edge value or
inside the grid, or at 0 or below on a positive (1-3-10 or log-spaced) axis, is refused (``1, 2`` → 4,
and nothing below 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .report import DEFAULT_TRAIN_ACC_THRESHOLD, first_reach, median_or_inf, sustained_reach

__all__ = [
    "SELECTION_METRICS",
    "DEFAULT_SELECTION_METRIC",
    "parse_selection_metric",
    "run_cost",
    "select_point",
    "axis_edge",
    "winner_edges",
    "extend_axis",
]

SELECTION_METRICS = ("sustained", "first", "auc", "train_acc@E")
DEFAULT_SELECTION_METRIC = "sustained"
_DIGITS = 6  # significant digits of an extended float value (readable folder names, no float noise)


def parse_selection_metric(metric: str) -> str:
    """``"sustained"``, ``"first"``, ``"auc"`` or ``"train_acc@E"`` (``E`` a whole epoch >= 1 in decimal digits:
    epoch 0 is before training), returned in canonical form; anything else is a ``ValueError`` listing the
    choices."""
    text = str(metric).strip() if isinstance(metric, str) else None
    if text in ("sustained", "first", "auc"):
        return text
    digits = text[len("train_acc@"):].strip() if text is not None and text.startswith("train_acc@") else ""
    if digits and all(c in "0123456789" for c in digits):  # not str.isdigit: it accepts '²', which int() refuses
        if int(digits) == 0:
            raise ValueError(f"selection_metric {metric!r}: epoch 0 is before any training, so its accuracy says "
                             "nothing of a grid point's training; pick an epoch >= 1 (e.g. train_acc@50)")
        return f"train_acc@{int(digits)}"
    raise ValueError(f"unknown selection_metric {metric!r}; choose sustained (default), first, auc or train_acc@E "
                     "(E a whole epoch >= 1, e.g. train_acc@50)")


def metric_epoch(metric: str) -> int | None:
    """``E`` of ``train_acc@E``; None for the other metrics."""
    return int(metric.partition("@")[2]) if metric.startswith("train_acc@") else None


def run_cost(records: list[dict], metric: str = DEFAULT_SELECTION_METRIC,
             threshold: float = DEFAULT_TRAIN_ACC_THRESHOLD) -> float:
    """The cost of one run's log under ``metric`` (module docstring): lower is better, inf for never."""
    if metric == "sustained":
        return sustained_reach(records, "train_acc", ">=", threshold)[0]
    if metric == "first":
        return first_reach(records, "train_acc", ">=", threshold)[0]
    accs = [_num(r.get("train_acc")) for r in records]
    if metric == "auc":
        return math.inf if not accs or any(math.isnan(a) for a in accs) else sum(1 - a for a in accs) / len(accs)
    epoch = metric_epoch(metric)
    if epoch is None:
        raise ValueError(f"unknown selection metric {metric!r}")
    acc = next((a for r, a in zip(records, accs) if _num(r.get("epoch")) == epoch), math.nan)
    return math.inf if math.isnan(acc) else 1 - acc


def _value(metric: str, cost: float) -> float | None:
    """A cost in the metric's own units for tables (epochs, mean error, accuracy); None for inf."""
    if math.isinf(cost):
        return None
    return 1 - cost if metric_epoch(metric) is not None else cost


def select_point(runs: Mapping[str, Mapping[int, list[dict]]], threshold: float = DEFAULT_TRAIN_ACC_THRESHOLD,
                 metric: str = DEFAULT_SELECTION_METRIC) -> tuple[str, list[dict]]:
    """The winning grid point of one method and the table behind it.

    ``runs``: ``{point name: {seed: records}}`` in grid order. Rank by the median cost of ``metric`` over
    the seeds, then the median final ``train_loss``, then grid order. Returns ``(winner, rows)``; rows (grid
    order) hold ``point``, ``value`` (the median in the metric's units, None for never), ``per_seed``,
    ``reached`` (seeds with a finite value), ``total``, ``first`` and ``sustained`` (median epochs to the
    threshold, None for never), ``final_train_loss`` and ``final_train_acc`` (medians of the last records, a
    diverged seed counting as the worst value: None when the median is one), ``rank`` (1 = winner)."""
    metric = parse_selection_metric(metric)
    rows = []
    for order, (name, by_seed) in enumerate(runs.items()):
        logs = list(by_seed.values())
        costs = [run_cost(recs, metric, threshold) for recs in logs]
        finals = [recs[-1] if recs else {} for recs in logs]
        med = median_or_inf(costs)
        loss = median_or_inf([f.get("train_loss", math.inf) for f in finals])
        first = median_or_inf([run_cost(recs, "first", threshold) for recs in logs])
        kept = median_or_inf([run_cost(recs, "sustained", threshold) for recs in logs])
        rows.append({
            "point": name, "value": _value(metric, med), "per_seed": [_value(metric, c) for c in costs],
            "reached": sum(math.isfinite(c) for c in costs), "total": len(costs),
            "first": None if math.isinf(first) else first, "sustained": None if math.isinf(kept) else kept,
            "final_train_loss": _finite(loss),
            "final_train_acc": _finite(-median_or_inf([-_num(f.get("train_acc")) for f in finals])),
            "_key": (med, loss, order),
        })
    if not rows:
        raise ValueError("no grid point to select from")
    for rank, row in enumerate(sorted(rows, key=lambda r: r["_key"]), 1):
        row["rank"] = rank
    for row in rows:
        del row["_key"]
    return next(r["point"] for r in rows if r["rank"] == 1), rows


# ----------------------------------------------------------------------------------------------------
# edges of the grid


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def axis_edge(values: Sequence, value: object) -> str | None:
    """``"low"`` if ``value`` is the smallest of a numeric axis ``values`` (two or more numbers), ``"high"`` if
    the largest, else None."""
    if len(values) < 2 or not all(_is_number(v) for v in values) or not _is_number(value):
        return None
    if value == min(values):
        return "low"
    return "high" if value == max(values) else None


def winner_edges(grid: Mapping[str, Sequence], point: Mapping[str, object]) -> dict[str, str | None]:
    """``{key: "low" | "high" | None}`` for a winning ``point`` of ``grid``."""
    return {key: axis_edge(values, point.get(key)) for key, values in grid.items()}


def extend_axis(values: Sequence, side: str) -> tuple[int | float | None, str]:
    """The value one step beyond the ``side`` (``"low"``/``"high"``) end of a numeric axis and how it was
    stepped (``"1-3-10 sequence"``, ``"ratio 2"``, ``"difference 0.1"``), or ``(None, why not)``; the rules
    are in the module docstring. Whether the new value is a valid setting is the caller's to check."""
    if not all(_is_number(v) for v in values):
        return None, "its values are not all numbers"
    if len(values) < 2:
        return None, "it has a single value, so no step"
    v = sorted(values)
    end, inner = (v[-1], v[-2]) if side == "high" else (v[0], v[1])
    terms = [_one_three_term(x) for x in v]
    positive = v[0] > 0
    if positive and None not in terms and all(b == a + 1 for a, b in zip(terms, terms[1:])):
        new, how, log = _one_three_value(terms[-1] + 1 if side == "high" else terms[0] - 1), "1-3-10 sequence", True
    elif positive and _log_spaced(v):
        step = end / inner
        new, how, log = end * step, f"ratio {max(step, 1 / step):.3g}", True
    else:
        step = end - inner
        new, how, log = end + step, f"difference {abs(step):.3g}", False
    if all(isinstance(x, int) for x in values):
        exact = new
        new = math.floor(new + 0.5) if side == "low" else math.ceil(new - 0.5)  # halves toward the grid
        if log and new <= 0:
            return None, f"one step ({how}) gives {exact:.3g}, not a whole number above 0"
    else:
        new = float(f"{new:.{_DIGITS}g}")
    if (new <= end) if side == "high" else (new >= end):
        return None, f"one step ({how}) rounds to the edge value {end!r} or inside the grid"
    return new, how


def _log_spaced(v: list) -> bool:
    """Sorted positive values: three or more whose successive ratios vary less than their differences, or two
    of which the larger is at least twice the smaller."""
    if len(v) == 2:
        return v[1] >= 2 * v[0]
    ratios = [b / a for a, b in zip(v, v[1:])]
    diffs = [b - a for a, b in zip(v, v[1:])]
    return max(ratios) / min(ratios) <= max(diffs) / min(diffs)


def _one_three_term(x: float) -> int | None:
    """``j`` with ``x`` the ``j``-th term of the 1-3-10 sequence (``2k`` for ``10^k``, ``2k + 1`` for ``3·10^k``,
    to 9 significant digits), or None."""
    if x <= 0:
        return None
    k = math.floor(math.log10(x))
    for kk in (k - 1, k, k + 1):  # log10 may round across a power of ten
        for j, m in ((2 * kk, 1), (2 * kk + 1, 3)):
            if math.isclose(x, m * 10.0 ** kk, rel_tol=1e-9):
                return j
    return None


def _one_three_value(j: int) -> float:
    """The ``j``-th term of the 1-3-10 sequence (:func:`_one_three_term`)."""
    k, odd = divmod(j, 2)
    return float(f"{(3 if odd else 1) * 10.0 ** k:.{_DIGITS}g}")


def _finite(x: float) -> float | None:
    """A median for the tables: None when it is not finite (never reached, diverged)."""
    return x if math.isfinite(x) else None


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan

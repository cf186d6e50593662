"""How a tuned comparison picks each method's grid point, and whether that point sits at the grid's edge.

Selection metrics, each a *cost* of one run's log (lower is better), ``A`` = the training-accuracy threshold:

- ``sustained`` (the default): the first evaluated epoch ``e`` with ``train_acc >= A`` at ``e`` and at every
  later evaluation; a run whose last evaluation is below ``A`` never reached it for good (cost inf). A rate
  that touches ``A`` at epoch 1 and then falls back cannot win with it.
- ``first``: the first evaluated epoch with ``train_acc >= A`` (inf if none).
- ``auc``: the mean training error ``mean_e (1 - train_acc_e)`` over every evaluated epoch (epoch 0, before
  training, included: the same for every point of one method and data set).
- ``train_acc@E``: the training accuracy at epoch ``E`` (higher is better; its cost is the error
  ``1 - train_acc_E``; inf when epoch ``E`` was not evaluated).

A diverged run (its log stands as one record with ``train_acc`` NaN and ``train_loss`` inf) costs inf under
every metric. Per grid point the cost is the median over the selection seeds (inf counted as inf, so a
point whose median seed never got there ranks last); ties go to the lower median final training loss, then
to the earlier grid point.

Edges: on a numeric grid axis (two or more values, all numbers) a winner at the smallest value is at the
``"low"`` edge, at the largest at the ``"high"`` one; anywhere else, or on an axis of one value or of
non-numbers, ``None``. :func:`extend_axis` gives the value one step beyond an edge: the grid's own ratio at
that end when its values are positive and log-spaced (successive ratios within a factor 1.25 of each other,
e.g. 1-3-10 or 1-2-5 grids), else its own difference there; rounded to 6 significant digits (whole numbers
stay whole, rounded away from the grid).
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
_LOG_SPACED = 1.25  # successive ratios within this factor of each other: the values are log-spaced
_DIGITS = 6  # significant digits of an extended float value (readable folder names, no float noise)


def parse_selection_metric(metric: str) -> str:
    """``"sustained"``, ``"first"``, ``"auc"`` or ``"train_acc@E"`` (``E`` a whole epoch >= 0), returned in
    canonical form; anything else is a ``ValueError`` listing the choices."""
    text = str(metric).strip() if isinstance(metric, str) else None
    if text in ("sustained", "first", "auc"):
        return text
    if text is not None and text.startswith("train_acc@") and text[len("train_acc@"):].strip().isdigit():
        return f"train_acc@{int(text[len('train_acc@'):])}"
    raise ValueError(f"unknown selection_metric {metric!r}; choose sustained (default), first, auc or train_acc@E "
                     "(E a whole epoch, e.g. train_acc@50)")


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
    threshold, None for never), ``final_train_loss``, ``final_train_acc``, ``rank`` (1 = winner)."""
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
            "final_train_loss": None if math.isinf(loss) else loss,
            "final_train_acc": median_or_inf([f.get("train_acc", math.nan) for f in finals]),
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
    stepped (``"ratio 3.33"``, ``"difference 0.1"``), or ``(None, why not)``; see the module docstring.
    Whether the new value is a valid setting is the caller's to check."""
    if not all(_is_number(v) for v in values):
        return None, "its values are not all numbers"
    if len(values) < 2:
        return None, "it has a single value, so no step"
    v = sorted(values)
    end, inner = (v[-1], v[-2]) if side == "high" else (v[0], v[1])
    ratios = [b / a for a, b in zip(v, v[1:])] if v[0] > 0 else []
    whole = all(isinstance(x, int) for x in values)
    if ratios and max(ratios) / min(ratios) <= _LOG_SPACED:
        step = end / inner
        new = end * step
        how = f"ratio {max(step, 1 / step):.3g}"
    else:
        step = end - inner
        new = end + step
        how = f"difference {abs(step):.3g}"
    if whole:
        new = math.ceil(new) if side == "high" else math.floor(new)
    else:
        new = float(f"{new:.{_DIGITS}g}")
    if (new <= end) if side == "high" else (new >= end):
        return None, f"one step ({how}) rounds to the edge value {end!r} or inside the grid"
    return new, how


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan

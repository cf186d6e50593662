"""Figures and tables from run logs: ``DIR/runs/<method>/seed-<s>/metrics.jsonl`` → ``DIR/summary.json``,
``DIR/report.md`` and ``DIR/*.png``.

Conventions (also written into ``report.md``):

- *Final* values are those of the last record of each run (its last evaluation). For every method we
  give the median, min and max over seeds. The median of an even number of seeds is the mean of the
  middle two (``numpy.median``).
- *Time to threshold*: the first evaluation at which a run's metric reaches the threshold
  (``train_acc >= 0.99`` and ``nc1 <= nc1_threshold`` by default, ``nc1_threshold`` from the runs'
  ``config.json``). We report the epoch and the cumulative training seconds ``wall_s`` of that
  evaluation, so the resolution is the evaluation interval. A run that never reaches a threshold counts
  as *not reached*: its time is ``inf``; medians and maxima are then taken with ``inf`` included (so the
  median is finite only when more than half of the seeds reached it). ``summary.json`` stores ``inf`` as
  ``null`` together with ``reached``/``total``; tables print an unreached median as ``>E`` (``E`` = the
  most epochs any seed ran) and unreached seconds as ``—``.
- Curves: the median over seeds at each evaluated epoch, with a min–max band; one colour per method,
  the same in every figure. Loss and NC metrics use a log scale (symlog near zero when a curve touches 0).
- Runs whose log lost or cut records (``runlog.check_run_log``: judged against the run's checkpoint, or
  against its ``config.json`` when the checkpoint was deleted) are left out; ``summary.json``
  (``excluded``: ``[{"run", "why"}]``) and ``report.md`` name them and say why.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .files import atomic_write_text, read_jsonl
from .runlog import check_run_log

__all__ = [
    "FIGURES",
    "DEFAULT_TRAIN_ACC_THRESHOLD",
    "load_runs",
    "run_configs",
    "default_thresholds",
    "summarize",
    "summary_table",
    "short_record",
    "plot_figures",
    "write_report",
]

DEFAULT_TRAIN_ACC_THRESHOLD = 0.99
_NC1_THRESHOLD_FALLBACK = 0.1  # used only when no run has a config.json with nc1_threshold

# Stable output file names: figure file -> (title, [(metric key, label)], log scale?).
FIGURES: dict[str, tuple[str, list[tuple[str, str]], bool]] = {
    "train_acc.png": ("Training accuracy", [("train_acc", "train accuracy")], False),
    "test_acc.png": ("Test accuracy", [("test_acc", "test accuracy")], False),
    "loss.png": ("Training loss", [("train_loss", "train loss")], True),
    "nc1.png": ("NC1: within-class variability tr(Σ_W Σ_B⁺)/K", [("nc1", "NC1")], True),
    "nc2.png": ("NC2: distance to a simplex ETF", [("nc2_w", "NC2 (W)"), ("nc2_h", "NC2 (H)")], True),
    "nc3.png": ("NC3: self-duality ‖WHᵀ/‖WHᵀ‖ − M/√(K−1)‖", [("nc3", "NC3")], True),
    "nc4.png": ("NC4: disagreement with nearest class mean", [("nc4", "NC4")], True),
}
OVERVIEW = "overview.png"

# Columns of the summary table: (metric key, header, is an accuracy).
_TABLE_METRICS = [
    ("train_acc", "train acc", True),
    ("test_acc", "test acc", True),
    ("nc1", "NC1", False),
    ("nc2_w", "NC2 W", False),
    ("nc2_h", "NC2 H", False),
    ("nc3", "NC3", False),
    ("nc4", "NC4", False),
]

# Paper's methods first, in a fixed order, so colours never change between figures or reports.
_METHOD_ORDER = ["standard", "fixed-etf", "nearest-etf", "nearest-etf-nograd", "standard-plain"]
_NON_METRICS = {"epoch", "step"}


# ----------------------------------------------------------------------------------------------------
# reading logs


def _order_methods(methods) -> list[str]:
    known = [m for m in _METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in _METHOD_ORDER)


def load_runs(out_dir: str | Path, excluded: list[dict] | None = None) -> dict[str, dict[int, list[dict]]]:
    """Read ``out_dir/runs/<method>/seed-<s>/metrics.jsonl`` → ``{method: {seed: [record, ...]}}``.

    Runs with an empty log are skipped; runs whose log is incomplete (``runlog.check_run_log``) are left
    out and appended to ``excluded`` as ``{"run": path relative to out_dir, "why": reason}`` (a warning
    each when ``excluded`` is None). Raises ValueError when there is nothing to report."""
    runs_dir = Path(out_dir) / "runs"
    runs: dict[str, dict[int, list[dict]]] = {}
    left_out: list[str] = []
    for path in sorted(runs_dir.glob("*/seed-*/metrics.jsonl")):
        try:
            seed = int(path.parent.name.removeprefix("seed-"))
        except ValueError:
            continue
        why = check_run_log(path.parent)
        if why is not None:
            run = path.parent.relative_to(out_dir).as_posix()
            _exclude(excluded, run, why)
            left_out.append(f"{run}: {why}")
            continue
        records = read_jsonl(path)
        if records:
            runs.setdefault(path.parent.parent.name, {})[seed] = records
    if not runs and left_out:
        raise ValueError(f"no complete run logs under {runs_dir}: all {len(left_out)} left out, e.g. {left_out[0]}")
    if not runs:
        raise ValueError(
            f"no run logs under {runs_dir}/<method>/seed-<s>/metrics.jsonl; "
            "point `ncguide report` at the --out directory of `ncguide compare`"
        )
    return {m: dict(sorted(runs[m].items())) for m in _order_methods(runs)}


def _exclude(excluded: list[dict] | None, run: str, why: str) -> None:
    if excluded is None:
        warnings.warn(f"{run} left out of the report: {why}", stacklevel=3)
    else:
        excluded.append({"run": run, "why": why})


def run_configs(out_dir: str | Path) -> list[dict]:
    """The ``config.json`` of every run under ``out_dir/runs`` (unreadable ones skipped)."""
    configs = []
    for path in sorted((Path(out_dir) / "runs").glob("*/seed-*/config.json")):
        try:
            configs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return configs


def default_thresholds(configs: list[dict] | None = None) -> dict[str, tuple[str, float]]:
    """``{"train_acc": (">=", 0.99), "nc1": ("<=", nc1_threshold)}``, nc1_threshold from the first config
    that has one (else 0.1)."""
    nc1 = next((c["nc1_threshold"] for c in configs or [] if c.get("nc1_threshold") is not None), None)
    return {
        "train_acc": (">=", DEFAULT_TRAIN_ACC_THRESHOLD),
        "nc1": ("<=", float(nc1) if nc1 is not None else _NC1_THRESHOLD_FALLBACK),
    }


# ----------------------------------------------------------------------------------------------------
# statistics


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _stats(values) -> dict:
    """median/min/max of finite-or-inf values (NaN dropped); inf → None for JSON."""
    v = np.array([_num(x) for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"median": None, "min": None, "max": None, "n": 0}
    out = {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
    return {k: (None if isinstance(x, float) and math.isinf(x) else x) for k, x in out.items()}


def _reached(value: float, op: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value >= threshold if op == ">=" else value <= threshold


def _first_reach(records: list[dict], key: str, op: str, threshold: float) -> tuple[float, float]:
    """(epoch, wall_s) of the first record whose ``key`` reaches the threshold; (inf, inf) if none."""
    for r in records:
        if _reached(_num(r.get(key)), op, threshold):
            return _num(r.get("epoch")), _num(r.get("wall_s"))
    return math.inf, math.inf


def summarize(
    runs: dict[str, dict[int, list[dict]]], thresholds: dict[str, tuple[str, float]] | None = None
) -> dict:
    """Per method over seeds: final metrics (median/min/max) and time to each threshold.

    Returns ``{"thresholds": {key: {"op", "value"}}, "methods": {method: {"seeds", "epochs", "wall_s",
    "final": {metric: {median, min, max, n}}, "reach": {key: {"op", "value", "reached", "total",
    "epoch": {median, min, max, per_seed}, "wall_s": {...}}}}}}`` (unreached → ``None``)."""
    thresholds = thresholds or default_thresholds()
    summary = {"thresholds": {k: {"op": op, "value": v} for k, (op, v) in thresholds.items()}, "methods": {}}
    for method, by_seed in runs.items():
        finals = {s: recs[-1] for s, recs in by_seed.items()}
        keys = [k for k in finals[next(iter(finals))] if k not in _NON_METRICS]
        keys += [k for f in finals.values() for k in f if k not in keys and k not in _NON_METRICS]
        final = {}
        for k in keys:
            values = [f[k] for f in finals.values() if k in f]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                final[k] = _stats(values)
        reach = {}
        for key, (op, value) in thresholds.items():
            hits = [_first_reach(recs, key, op, value) for recs in by_seed.values()]
            epochs, secs = [h[0] for h in hits], [h[1] for h in hits]
            reach[key] = {
                "op": op,
                "value": value,
                "reached": sum(math.isfinite(e) for e in epochs),
                "total": len(hits),
                "epoch": {**_stats(epochs), "per_seed": [e if math.isfinite(e) else None for e in epochs]},
                "wall_s": {**_stats(secs), "per_seed": [t if math.isfinite(t) else None for t in secs]},
            }
        summary["methods"][method] = {
            "seeds": list(by_seed),
            "epochs": _stats(f.get("epoch") for f in finals.values()),
            "wall_s": _stats(f.get("wall_s") for f in finals.values()),
            "final": final,
            "reach": reach,
        }
    return summary


# ----------------------------------------------------------------------------------------------------
# table


def _fmt(x, acc: bool) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.2f}%" if acc else f"{x:.3g}"


def _fmt_stat(st: dict | None, acc: bool) -> str:
    if not st or st.get("n", 0) == 0:
        return "—"
    return f"{_fmt(st['median'], acc)} [{_fmt(st['min'], acc)}, {_fmt(st['max'], acc)}]"


def _threshold_label(key: str, op: str, value: float) -> str:
    v = f"{100 * value:g}%" if key.endswith("acc") else f"{value:g}"
    return f"{key} {'≥' if op == '>=' else '≤'} {v}"


def short_record(record: dict) -> str:
    """One line for a log record: ``train acc 99.50%, test acc 93.10%, nc1 0.123, ...``."""
    parts = [f"{name} {100 * record[k]:.2f}%" for k, name in [("train_acc", "train acc"), ("test_acc", "test acc")]
             if isinstance(record.get(k), (int, float))]
    parts += [f"{k} {record[k]:.3g}" for k in ("nc1", "nc2_w", "nc3") if isinstance(record.get(k), (int, float))]
    return ", ".join(parts)


def summary_table(summary: dict) -> str:
    """Markdown table: one row per method, final metrics as ``median [min, max]`` over seeds, then the
    median epochs (``reached/total``) and seconds to each threshold."""
    methods = summary["methods"]
    metrics = [(k, h, a) for k, h, a in _TABLE_METRICS if any(k in m["final"] for m in methods.values())]
    head = ["method", "seeds"] + [h for _, h, _ in metrics]
    for key, t in summary["thresholds"].items():
        label = _threshold_label(key, t["op"], t["value"])
        head += [f"epochs to {label}", f"seconds to {label}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, m in methods.items():
        row = [f"`{method}`", str(len(m["seeds"]))]
        row += [_fmt_stat(m["final"].get(k), a) for k, _, a in metrics]
        max_epoch = m["epochs"]["max"]
        for key in summary["thresholds"]:
            r = m["reach"][key]
            ep, sec = r["epoch"]["median"], r["wall_s"]["median"]
            if ep is None:
                ep_s = f">{max_epoch:g}" if max_epoch is not None else "—"
            else:
                ep_s = f"{ep:g}"
            row += [f"{ep_s} ({r['reached']}/{r['total']})", "—" if sec is None else f"{sec:.3g}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# figures


def _colours(methods: list[str]) -> dict[str, str]:
    """Fixed colour per method: the paper's methods keep their colour whatever subset is plotted."""
    ordered = _METHOD_ORDER + sorted(m for m in methods if m not in _METHOD_ORDER)
    return {m: f"C{ordered.index(m) % 10}" for m in methods}


def _curve(by_seed: dict[int, list[dict]], key: str):
    """(epochs, median, min, max) over seeds at every epoch where at least one seed has ``key``."""
    per_epoch: dict[float, list[float]] = {}
    for recs in by_seed.values():
        for r in recs:
            e, v = _num(r.get("epoch")), _num(r.get(key))
            if not (math.isnan(e) or math.isnan(v)):
                per_epoch.setdefault(e, []).append(v)
    if not per_epoch:
        return None
    ep = np.array(sorted(per_epoch))
    vals = [np.array(per_epoch[e]) for e in ep]
    return ep, np.array([np.median(v) for v in vals]), np.array([v.min() for v in vals]), \
        np.array([v.max() for v in vals])


def _draw(ax, runs, colours, series, log: bool, title: str) -> bool:
    drawn, lows = False, []
    styles = ["-", "--", ":", "-."]
    for method, by_seed in runs.items():
        for i, (key, label) in enumerate(series):
            c = _curve(by_seed, key)
            if c is None:
                continue
            ep, med, lo, hi = c
            name = method if len(series) == 1 else f"{method} {label}"
            ax.plot(ep, med, styles[i % 4], color=colours[method], label=name, lw=1.6)
            ax.fill_between(ep, lo, hi, color=colours[method], alpha=0.2, lw=0)
            lows.append(lo)
            drawn = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    if drawn and log:
        low = np.concatenate(lows)
        if np.all(low > 0):
            ax.set_yscale("log")
        else:
            pos = low[low > 0]
            ax.set_yscale("symlog", linthresh=float(pos.min()) if pos.size else 1e-3)
    if drawn:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    return drawn


def plot_figures(runs: dict[str, dict[int, list[dict]]], out_dir: str | Path) -> list[str]:
    """Write one PNG per entry of ``FIGURES`` (those with data) and ``overview.png``; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    colours = _colours(list(runs))
    written = []
    for fname, (title, series, log) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(5.5, 4))
        if _draw(ax, runs, colours, series, log, title):
            fig.tight_layout()
            fig.savefig(out_dir / fname, dpi=110)
            written.append(fname)
        plt.close(fig)
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, (title, series, log) in zip(axes.flat, FIGURES.values()):
        if not _draw(ax, runs, colours, series, log, title):
            ax.set_axis_off()
    axes.flat[-1].set_axis_off()
    fig.tight_layout()
    fig.savefig(out_dir / OVERVIEW, dpi=90)
    plt.close(fig)
    return [OVERVIEW] + written


# ----------------------------------------------------------------------------------------------------
# the whole report


def _setup_line(configs: list[dict], runs) -> str:
    if not configs:
        return ""
    c = configs[0]
    keys = ["dataset", "model", "epochs", "batch_size", "optimizer", "lr", "temperature", "delta"]
    parts = [f"{k}={c[k]}" for k in keys if c.get(k) is not None]
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    return f"Setup: {', '.join(parts)}; seeds {seeds}."


def _excluded_lines(excluded: list[dict]) -> list[str]:
    """The report's note on runs left out (none when none were)."""
    if not excluded:
        return []
    lines = [f"**Left out**: {len(excluded)} run(s) whose log is incomplete (the table has fewer seeds):", ""]
    return lines + [f"- `{x['run']}`: {x['why']}" for x in excluded] + [""]


def write_report(out_dir: str | Path, thresholds: dict[str, tuple[str, float]] | None = None) -> dict:
    """Regenerate ``summary.json``, ``report.md`` and the PNGs in ``out_dir`` from its run logs; returns
    the summary. ``thresholds`` defaults to ``default_thresholds(<the runs' config.json>)``."""
    out_dir = Path(out_dir)
    excluded: list[dict] = []
    runs = load_runs(out_dir, excluded)
    configs = run_configs(out_dir)
    summary = summarize(runs, thresholds or default_thresholds(configs))
    summary["excluded"] = excluded
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    figures = plot_figures(runs, out_dir)
    t = summary["thresholds"]
    reach = "; ".join(_threshold_label(k, v["op"], v["value"]) for k, v in t.items())
    md = [
        "# ncguide comparison",
        "",
        _setup_line(configs, runs),
        "",
        "## Summary",
        "",
        summary_table(summary),
        "",
        *_excluded_lines(excluded),
        "Final values are those of each run's last evaluation (training-set NC metrics on the features the "
        "classifier sees), as median [min, max] over seeds.",
        "",
        f"Thresholds: {reach}. *Epochs to* gives the median first evaluated epoch at which a seed reached the "
        "threshold and, in brackets, how many seeds reached it; a seed that never reached it counts as "
        "infinitely late, so `>E` means the median seed did not reach it within the E epochs run. "
        "*Seconds to* is the median cumulative training time (evaluation excluded) at that epoch. "
        "Exact numbers, including per-seed values, are in `summary.json`.",
        "",
        "## Figures",
        "",
        "Median over seeds (line) and min–max over seeds (band).",
        "",
    ]
    md += [f"![{f.removesuffix('.png')}]({f})\n" for f in figures]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    return summary

"""Figures and tables from run logs: ``DIR/runs/<method>/seed-<s>/metrics.jsonl`` → ``DIR/summary.json``,
``DIR/report.md`` and ``DIR/*.png``.

Conventions (also written into ``report.md``):

- *Final* values are those of the last record of each run (its last evaluation). For every method we
  give the median, min and max over seeds, written ``median [min–max]`` in every table. The median of an
  even number of seeds is the mean of the middle two (``numpy.median``).
- Tables, none wider than about eight columns: the paper's (training accuracy at fixed epochs), the
  summary (final accuracies, epochs to the training-accuracy threshold), neural collapse (NC1–NC4, NC2 of
  W and of H, epochs to the NC1 threshold) and wall-clock time (seconds per run, per epoch and to each
  threshold).
- *Time to threshold*: the first evaluation at which a run's metric reaches the threshold
  (``train_acc >= 0.99`` and ``nc1 <= nc1_threshold`` by default, ``nc1_threshold`` from the runs'
  ``config.json``). We report the epoch and the cumulative training seconds ``wall_s`` of that
  evaluation, so the resolution is the evaluation interval. Seconds carry a caveat (``WALL_CLOCK_CAVEAT``)
  and the machines they were measured on (each run's ``machine.json``, ``machine.py``: one line per
  machine, and a note when runs trained on several machines, with several thread counts, several at
  once, or moved between machines; "not recorded" for folders written before it existed; ``summary.json``'s
  ``machines``). A run that never reaches a threshold counts
  as *not reached*: its time is ``inf``; medians and maxima are then taken with ``inf`` included (so the
  median is finite only when more than half of the seeds reached it). ``summary.json`` stores ``inf`` as
  ``null`` together with ``reached``/``total``; tables print an unreached median as ``>E`` (``E`` = the
  most epochs any seed ran) and an unreached seed's seconds as ``∞``. Beside this *first hit*, the *sustained*
  epoch: the first evaluation from which the run stays at the threshold to its last evaluation (a run
  that ends below it, or diverged, never reached it for good).
- *Verdict* (``verdict.py``): the focus method (``nearest-etf`` by default) against the other method with
  the fewest median sustained epochs: their ratio and the final test-accuracy difference, each with a
  bootstrap 95% interval over seeds and a permutation-test p-value; the report's first lines.
- Curves: the median over seeds at each evaluated epoch, with a min–max band; one colour and dash pattern
  per method, the same in every figure, and one legend below the panels. Loss and NC metrics use a log
  scale (symlog near zero when a curve touches 0), NC2 of H and of W a panel each (the ETF heads' W sits
  near 1e-8). Accuracy is drawn on 0–100% and zoomed to the data (:func:`accuracy_zoom`). An overview panel
  without data says why (the UFM has no test set) instead of staying blank.
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

from .files import atomic_write, atomic_write_text, json_text, read_jsonl
from .machine import machine_lines, read_starts, summarize_machines
from .runlog import check_run_log
from .verdict import build_verdict, length_caution, resolve_focus, verdict_lines

__all__ = [
    "FIGURES",
    "DEFAULT_TRAIN_ACC_THRESHOLD",
    "DIVERGED",
    "SELECTION",
    "check_report_epochs",
    "first_reach",
    "sustained_reach",
    "selection_metric_label",
    "median_or_inf",
    "read_selection",
    "tuning_under_way",
    "run_folders",
    "load_runs",
    "run_configs",
    "default_thresholds",
    "report_thresholds",
    "summarize",
    "summary_table",
    "nc_table",
    "time_table",
    "paper_table",
    "tuning_table",
    "short_record",
    "accuracy_zoom",
    "figure",
    "plot_figures",
    "WALL_CLOCK_CAVEAT",
    "write_report",
]

DEFAULT_TRAIN_ACC_THRESHOLD = 0.99
_NC1_THRESHOLD_FALLBACK = 0.1  # used only when no run has a config.json with nc1_threshold

# Stable output file names -> their panels: (title, metric key, y scale). Scales: "log" (symlog when a curve
# touches 0), "zoom" (accuracy from just below the lowest median after the first epochs: accuracy_zoom),
# "full" (accuracy on 0–1). Each NC2 gets its own panel: the ETF heads' W sits at ~1e-8, far below any H.
_LOSS = ("Training loss", "train_loss", "log")
_NC = {"nc1": ("NC1: within-class variability tr(Σ_W Σ_B⁺)/K", "nc1", "log"),
       "nc2_h": ("NC2 of the features H: distance to a simplex ETF", "nc2_h", "log"),
       "nc2_w": ("NC2 of the classifier W: distance to a simplex ETF", "nc2_w", "log"),
       "nc3": ("NC3: self-duality ‖WHᵀ/‖WHᵀ‖ − M/√(K−1)‖", "nc3", "log"),
       "nc4": ("NC4: disagreement with nearest class mean", "nc4", "log")}
FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "train_acc.png": [("Training accuracy", "train_acc", "full"), ("Training accuracy (zoomed)", "train_acc", "zoom")],
    "test_acc.png": [("Test accuracy", "test_acc", "full"), ("Test accuracy (zoomed)", "test_acc", "zoom")],
    "loss.png": [_LOSS],
    "nc1.png": [_NC["nc1"]],
    "nc2.png": [_NC["nc2_h"], _NC["nc2_w"]],
    "nc3.png": [_NC["nc3"]],
    "nc4.png": [_NC["nc4"]],
}
_OVERVIEW_PANELS = [FIGURES["train_acc.png"][1], FIGURES["test_acc.png"][1], _LOSS, *_NC.values()]
OVERVIEW = "overview.png"
DIVERGED = "DIVERGED"  # in a run folder of a compare: that run stopped on a non-finite loss (the reason inside)
SELECTION = "selection.json"  # written by a compare with a grid: the tuning table and each method's winner
PARTIAL_TUNING = (
    "`selection.json` is not written yet (a tuned comparison writes it once every method has its winner), so this "
    "report shows the selection runs finished so far, one row per method and grid point over the selection seeds: "
    "no winner, no report seeds, no verdict. Run the same `ncguide compare` command to go on; `ncguide report` then "
    "writes the full report.")
WALL_CLOCK_CAVEAT = (
    "**Seconds are not a speed benchmark.** They are wall-clock training time, measured while other work may have "
    "run on the same machine (other runs of this comparison, other programs), with whatever threads each run had. "
    "Compare methods by epochs; to compare their speed, time them on quiet cores with `benchmarks/overhead.py`.")

# Columns of the tables of final values: (metric key, header, is an accuracy).
_HEADLINE_METRICS = [("train_acc", "train acc", True), ("test_acc", "test acc", True)]
_NC_METRICS = [("nc1", "NC1", False), ("nc2_w", "NC2 W", False), ("nc2_h", "NC2 H", False), ("nc3", "NC3", False),
               ("nc4", "NC4", False)]

# Paper's methods first, in a fixed order, so colours never change between figures or reports.
_METHOD_ORDER = ["standard", "fixed-etf", "nearest-etf", "nearest-etf-nograd", "standard-plain"]
_NON_METRICS = {"epoch", "step"}


# ----------------------------------------------------------------------------------------------------
# reading logs


def _order_methods(methods, listed=()) -> list[str]:
    """The paper's methods in their fixed order, then others as the comparison listed them, then by name."""
    known = [m for m in _METHOD_ORDER if m in methods]
    listed = [m for m in listed if m in methods and m not in known] if isinstance(listed, list) else []
    return known + listed + sorted(m for m in methods if m not in _METHOD_ORDER and m not in listed)


def read_selection(out_dir: str | Path) -> dict | None:
    """``out_dir/selection.json`` (a compare with a grid), or None."""
    path = Path(out_dir) / SELECTION
    if not path.is_file():
        return None
    try:
        sel = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); rerun the `ncguide compare` that wrote it") from None
    why = _selection_problem(sel)
    if why:
        raise ValueError(f"{path} is not a selection written by `ncguide compare` ({why}); rerun the compare that "
                         "wrote it (its runs are reused) to rewrite it")
    return sel


def _selection_problem(sel) -> str | None:
    if not isinstance(sel, dict):
        return "not a mapping"
    for key, kind in (("folders", dict), ("report_seeds", list), ("selection_seeds", list), ("grid", dict),
                      ("selected", dict), ("tuning", dict)):
        if not isinstance(sel.get(key), kind):
            return f"{key!r} missing or not a {kind.__name__}"
    for key, kind in (("edge", dict), ("grids", dict), ("extensions", list), ("not_extended", list),
                      ("selection_metric", str)):
        if key in sel and not isinstance(sel[key], kind):
            return f"{key!r} is not a {kind.__name__}"
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in sel["report_seeds"] + sel["selection_seeds"]):
        return "seeds must be integers"
    if set(sel["report_seeds"]) & set(sel["selection_seeds"]):
        return "report seeds and selection seeds overlap"
    for method, folder in sel["folders"].items():
        if not (isinstance(folder, str) and folder and "/" not in folder and "\\" not in folder
                and not folder.startswith(".") and "/" not in method and not method.startswith(".")):
            return f"folder {folder!r} of {method!r} is not a grid point's folder name"
    return None


def _seed_of(path: Path) -> int | None:
    try:
        return int(path.name.removeprefix("seed-"))
    except ValueError:
        return None


def run_folders(out_dir: str | Path) -> dict[str, dict[int, Path]]:
    """The run folders a report covers: ``{method: {seed: folder}}``.

    Without ``selection.json``: every ``runs/<method>/seed-<s>``. With it (a tuned compare): per method
    only ``runs/<method>/<selected point>/seed-<s>`` for the report seeds — selection runs are never
    reported."""
    runs_dir = Path(out_dir) / "runs"
    selection = read_selection(out_dir)
    found: dict[str, dict[int, Path]] = {}
    if selection is None and tuning_under_way(out_dir):
        return _selection_runs_so_far(Path(out_dir))
    if selection is None:
        for path in sorted(runs_dir.glob("*/seed-*")):
            if (seed := _seed_of(path)) is not None and path.is_dir():
                found.setdefault(path.parent.name, {})[seed] = path
    else:
        report_seeds = set(selection.get("report_seeds", []))
        for method, folder in selection.get("folders", {}).items():
            for path in sorted((runs_dir / method / folder).glob("seed-*")):
                if (seed := _seed_of(path)) in report_seeds and path.is_dir():
                    found.setdefault(method, {})[seed] = path
    order = _order_methods(found, _compare_setting(Path(out_dir), "methods"))
    return {m: dict(sorted(found[m].items())) for m in order}


def tuning_under_way(out_dir: str | Path) -> bool:
    """A tuned comparison whose selection has not ended: its ``config.yaml`` has a grid, ``selection.json`` is
    not written yet (``compare`` writes it once every method has its winner)."""
    grid = _compare_setting(Path(out_dir), "grid")
    return isinstance(grid, dict) and bool(grid) and not (Path(out_dir) / SELECTION).is_file()


def _selection_runs_so_far(out_dir: Path) -> dict[str, dict[int, Path]]:
    """The selection runs of a tuning under way, one row per method and grid point: ``{"<method> <point>": {seed:
    folder}}`` on the comparison's selection seeds, in its method order."""
    settings = compare_settings(out_dir)
    seeds = settings.get("selection_seeds")
    methods = settings.get("methods") if isinstance(settings.get("methods"), list) else []
    found: dict[tuple[str, str], dict[int, Path]] = {}
    for path in sorted((out_dir / "runs").glob("*/*/seed-*")):
        seed = _seed_of(path)
        if seed is not None and path.is_dir() and (not isinstance(seeds, list) or seed in seeds):
            found.setdefault((path.parent.parent.name, path.parent.name), {})[seed] = path

    def rank(key: tuple[str, str]):
        return (methods.index(key[0]) if key[0] in methods else len(methods), key)

    return {f"{m} {point}": dict(sorted(found[(m, point)].items())) for m, point in sorted(found, key=rank)}


def load_runs(out_dir: str | Path, excluded: list[dict] | None = None) -> dict[str, dict[int, list[dict]]]:
    """Read the ``metrics.jsonl`` of every run folder of :func:`run_folders` → ``{method: {seed: [record,
    ...]}}``.

    Runs with an empty log are skipped; runs whose log is incomplete (``runlog.check_run_log``), whose
    checkpoint is not ncguide's or whose ``config.json`` the schema refuses are left
    out and appended to ``excluded`` as ``{"run": path relative to out_dir, "why": reason}`` (a warning
    each when ``excluded`` is None). Raises ValueError when there is nothing to report."""
    runs: dict[str, dict[int, list[dict]]] = {}
    left_out: list[str] = []
    folders = run_folders(out_dir)
    selection = read_selection(out_dir)
    for method, point in (selection or {}).get("folders", {}).items():
        if method not in folders:
            _exclude(excluded, f"runs/{method}/{point}", "selection.json selects this point but it holds no run of "
                                                         "the report seeds; rerun the compare")
            left_out.append(f"runs/{method}/{point}: missing")
    for method, by_seed in folders.items():
        for seed, folder in by_seed.items():
            if not any((folder / f).is_file() for f in ("metrics.jsonl", "checkpoint.pt")):
                continue
            why = check_run_log(folder) or _config_problem(folder) or _unfinished(folder)
            if why is not None:
                run = folder.relative_to(out_dir).as_posix()
                _exclude(excluded, run, why)
                left_out.append(f"{run}: {why}")
                continue
            records = read_jsonl(folder / "metrics.jsonl")
            if records:
                runs.setdefault(method, {})[seed] = records
    runs_dir = Path(out_dir) / "runs"
    if not runs and left_out:
        raise ValueError(f"no complete run logs under {runs_dir}: all {len(left_out)} left out, e.g. {left_out[0]}")
    if not runs:
        if selection is None and any(runs_dir.glob("*/*/seed-*/metrics.jsonl")) and not tuning_under_way(out_dir):
            raise ValueError(f"{runs_dir} holds runs of grid points (runs/<method>/<point>/seed-<s>) but "
                             f"{Path(out_dir) / SELECTION} is missing; rerun the tuned compare (its runs are reused)")
        raise ValueError(_nothing_to_report(Path(out_dir)))
    return runs


def _nothing_to_report(out_dir: Path) -> str:
    """Why ``out_dir`` has no run to report, and what to run."""
    if (out_dir / "config.yaml").is_file() or (out_dir / "runs").is_dir():
        return (f"no run of the comparison in {out_dir} has logged anything yet; run `ncguide compare --config "
                f"{out_dir / 'config.yaml'} --out {out_dir}` with the launcher it was started with (e.g. `--launcher "
                f"slurm ...`: config.yaml does not keep it) to train or collect its runs, or wait for those under way")
    if (out_dir / "metrics.jsonl").is_file() or (out_dir / "checkpoint.pt").is_file():
        return (f"{out_dir} is a run of `ncguide train`, not a comparison: `ncguide report` reads the --out folder of "
                "`ncguide compare` (a run's own figures are written by `ncguide train`)")
    return (f"{out_dir} is not a comparison folder (no config.yaml, no runs/); give the --out folder of `ncguide "
            f"compare`, or make one: ncguide compare --config CONFIG --out {out_dir}")


def _unfinished(folder: Path) -> str | None:
    """Why a run with an intact log is not a result yet: its checkpoint says it is unfinished (a compare that
    was stopped, or one still running). A diverged run (``DIVERGED``) is a result and is kept."""
    from .checkpoint import CHECKPOINT, load_checkpoint

    if (folder / DIVERGED).is_file() or not (folder / CHECKPOINT).is_file():
        return None
    try:
        ckpt = load_checkpoint(folder / CHECKPOINT)
    except (OSError, ValueError):
        return None  # check_run_log has judged it
    if ckpt.get("finished"):
        return None
    epochs = (ckpt.get("config") or {}).get("epochs")
    return (f"unfinished (its checkpoint is at epoch {ckpt.get('epoch')} of {epochs}); rerun the same command to "
            "finish it")


def _config_problem(folder: Path) -> str | None:
    """Why a run's ``config.json`` (read for thresholds and the setup line) is unfit: the schema refuses it."""
    from .runlog import read_saved_config

    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        read_saved_config(path)
    except OSError as e:
        return f"config.json is unreadable ({e.strerror})"
    except ValueError as e:
        return (f"{str(e).replace(str(path), 'config.json', 1)}; rerunning the same compare command rewrites it "
                "from the run's checkpoint")
    return None


def _exclude(excluded: list[dict] | None, run: str, why: str) -> None:
    if excluded is None:
        warnings.warn(f"{run} left out of the report: {why}", stacklevel=3)
    else:
        excluded.append({"run": run, "why": why})


def run_configs(out_dir: str | Path) -> list[dict]:
    """The ``config.json`` of every run the report covers, read through the config schema (completed with
    today's defaults; missing, unreadable and invalid ones skipped: the report leaves those runs out)."""
    from .runlog import read_saved_config

    configs = []
    for by_seed in run_folders(out_dir).values():
        for folder in by_seed.values():
            try:
                configs.append(read_saved_config(folder / "config.json").to_dict())
            except (OSError, ValueError):
                continue
    return configs


def check_report_epochs(report_epochs) -> list[int] | None:
    """``"50,200"``, ``[50, 200]`` or ``50`` → ``[50, 200]`` (epochs >= 0, each once, read by the rule of the config's
    integers: no ``2.5``, no ``5e1``); None stays None (the default)."""
    from .config import ConfigError, Rule, read_integer

    if report_epochs is None:
        return None
    bad = f"bad report_epochs {report_epochs!r}; give whole epochs like 50,200"
    if isinstance(report_epochs, str):
        report_epochs = [e.strip() for e in report_epochs.split(",") if e.strip()]
    elif isinstance(report_epochs, int) and not isinstance(report_epochs, bool):
        report_epochs = [report_epochs]
    if not isinstance(report_epochs, (list, tuple)):
        raise ValueError(bad)
    try:
        epochs = [read_integer("report_epochs", e, Rule(lo=0, words="whole epochs >= 0")) for e in report_epochs]
    except ConfigError as e:
        raise ValueError(bad if str(e).startswith("bad value") else str(e)) from None
    if not epochs:
        raise ValueError(f"report_epochs must be whole epochs >= 0; got {report_epochs!r}")
    twice = sorted({e for e in epochs if epochs.count(e) > 1})
    if twice:
        raise ValueError(f"report_epochs lists epoch {twice[0]} twice; give each epoch once")
    return sorted(epochs)


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


def median_or_inf(values) -> float:
    """The median with NaN counted as inf (a diverged or missing value is the worst); inf when empty."""
    v = np.array([_num(x) for x in values], dtype=np.float64)
    v[np.isnan(v)] = math.inf
    return float(np.median(v)) if v.size else math.inf


def _reached(value: float, op: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value >= threshold if op == ">=" else value <= threshold


def first_reach(records: list[dict], key: str, op: str, threshold: float) -> tuple[float, float]:
    """(epoch, wall_s) of the first record whose ``key`` reaches the threshold; (inf, inf) if none."""
    for r in records:
        if _reached(_num(r.get(key)), op, threshold):
            return _num(r.get("epoch")), _num(r.get("wall_s"))
    return math.inf, math.inf


def sustained_reach(records: list[dict], key: str, op: str, threshold: float) -> tuple[float, float]:
    """(epoch, wall_s) of the first record from which ``key`` stays at the threshold through the last record;
    (inf, inf) when the last record misses it (a run that ends below never reached it for good)."""
    start = None
    for r in reversed(records):
        if not _reached(_num(r.get(key)), op, threshold):
            break
        start = r
    if start is None:
        return math.inf, math.inf
    return _num(start.get("epoch")), _num(start.get("wall_s"))


def default_report_epochs(runs: dict[str, dict[int, list[dict]]]) -> list[int]:
    """The last epoch any run reached and its midpoint (the paper reports epochs 50 and 200 of 200)."""
    last = max((int(_num(recs[-1].get("epoch"))) for by_seed in runs.values() for recs in by_seed.values()
                if recs and math.isfinite(_num(recs[-1].get("epoch")))), default=0)
    return sorted({last // 2, last})


def _at_epoch(records: list[dict], epoch: int, key: str) -> float:
    """``key`` of the record evaluated at ``epoch`` (NaN when that epoch was not evaluated)."""
    return next((_num(r.get(key)) for r in records if _num(r.get("epoch")) == epoch), math.nan)


def summarize(
    runs: dict[str, dict[int, list[dict]]], thresholds: dict[str, tuple[str, float]] | None = None,
    report_epochs: list[int] | None = None, diverged: dict[str, list[int]] | None = None,
) -> dict:
    """Per method over seeds: final metrics (median/min/max), time to each threshold, and training accuracy
    at ``report_epochs`` (default :func:`default_report_epochs`).

    Returns ``{"thresholds": {key: {"op", "value"}}, "report_epochs": [E, ...], "methods": {method: {"seeds",
    "epochs", "wall_s", "seconds_per_epoch", "final": {metric: {median, min, max, n}}, "at_epoch": {"E":
    {"train_acc": {median, min, max, n, per_seed}}}, "reach": {key: {"op", "value", "reached", "total",
    "epoch": {median, min, max, per_seed}, "wall_s": {...}}}, "sustained": {key: the same}}}}`` (unreached →
    ``None``; an epoch a seed did not evaluate is left out of its statistics). ``seconds_per_epoch``: each
    seed's final ``wall_s`` over its final epoch. ``reach`` counts the first evaluation at the
    threshold, ``sustained`` the first from which the run stays there to its end (:func:`sustained_reach`);
    seeds listed in ``diverged`` (``{method: [seed, ...]}``) never reach it for good."""
    thresholds = thresholds or default_thresholds()
    report_epochs = default_report_epochs(runs) if report_epochs is None else list(report_epochs)
    summary = {"thresholds": {k: {"op": op, "value": v} for k, (op, v) in thresholds.items()},
               "report_epochs": report_epochs, "methods": {}}
    for method, by_seed in runs.items():
        finals = {s: recs[-1] for s, recs in by_seed.items()}
        keys = [k for k in finals[next(iter(finals))] if k not in _NON_METRICS]
        keys += [k for f in finals.values() for k in f if k not in keys and k not in _NON_METRICS]
        final = {}
        for k in keys:
            values = [f[k] for f in finals.values() if k in f]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                final[k] = _stats(values)
        reach, sustained = {}, {}
        broken = set((diverged or {}).get(method, []))
        for key, (op, value) in thresholds.items():
            reach[key] = _reach_stats([first_reach(recs, key, op, value) for recs in by_seed.values()], op, value)
            kept = [(math.inf, math.inf) if s in broken else sustained_reach(recs, key, op, value)
                    for s, recs in by_seed.items()]
            sustained[key] = _reach_stats(kept, op, value)
        at_epoch = {}
        for e in report_epochs:
            accs = [_at_epoch(recs, e, "train_acc") for recs in by_seed.values()]
            at_epoch[str(e)] = {"train_acc": {**_stats(accs), "per_seed": [None if math.isnan(a) else a for a in accs]}}
        summary["methods"][method] = {
            "seeds": list(by_seed),
            "epochs": _stats(f.get("epoch") for f in finals.values()),
            "wall_s": _stats(f.get("wall_s") for f in finals.values()),
            "seconds_per_epoch": _stats(_num(f.get("wall_s")) / _num(f.get("epoch")) for f in finals.values()
                                        if _num(f.get("epoch")) > 0),
            "final": final,
            "at_epoch": at_epoch,
            "reach": reach,
            "sustained": sustained,
        }
    return summary


def _reach_stats(hits: list[tuple[float, float]], op: str, value: float) -> dict:
    """The ``reach``/``sustained`` entry of one threshold from per-seed (epoch, wall_s) pairs (inf: never)."""
    epochs, secs = [h[0] for h in hits], [h[1] for h in hits]
    return {
        "op": op,
        "value": value,
        "reached": sum(math.isfinite(e) for e in epochs),
        "total": len(hits),
        "epoch": {**_stats(epochs), "per_seed": [e if math.isfinite(e) else None for e in epochs]},
        "wall_s": {**_stats(secs), "per_seed": [t if math.isfinite(t) else None for t in secs]},
    }


# ----------------------------------------------------------------------------------------------------
# table


def _fmt(x, acc: bool) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.2f}%" if acc else f"{x:.3g}"


def _fmt_range(st: dict | None, acc: bool, unbounded: str = "—") -> str:
    """``median [min–max]`` over seeds, the one range notation of every table (the paper's form); a bound that
    is None (a seed that never reached a threshold: infinitely late) prints as ``unbounded``."""
    if not st or st.get("n", 0) == 0:
        return "—"
    mid, lo, hi = (unbounded if st[k] is None else _fmt(st[k], acc) for k in ("median", "min", "max"))
    return f"{mid} [{lo}–{hi}]"


def _threshold_label(key: str, op: str, value: float) -> str:
    v = f"{100 * value:g}%" if key.endswith("acc") else f"{value:g}"
    return f"{key} {'≥' if op == '>=' else '≤'} {v}"


def short_record(record: dict) -> str:
    """One line for a log record: ``train acc 99.50%, test acc 93.10%, nc1 0.123, ...``."""
    parts = [f"{name} {100 * record[k]:.2f}%" for k, name in [("train_acc", "train acc"), ("test_acc", "test acc")]
             if isinstance(record.get(k), (int, float))]
    parts += [f"{k} {record[k]:.3g}" for k in ("nc1", "nc2_w", "nc3") if isinstance(record.get(k), (int, float))]
    return ", ".join(parts)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _final_columns(summary: dict, columns: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    """The columns of ``columns`` that some method has a final value of."""
    return [c for c in columns if any(c[0] in m["final"] for m in summary["methods"].values())]


def summary_table(summary: dict) -> str:
    """The headline, one row per method: seeds, final training and test accuracy as ``median [min–max]`` over
    seeds, and the median epochs to the training-accuracy threshold, first hit and sustained
    (``reached/total``). The NC metrics are in :func:`nc_table`, the seconds in :func:`time_table`."""
    metrics = _final_columns(summary, _HEADLINE_METRICS)
    t = summary["thresholds"].get("train_acc")
    head = ["method", "seeds"] + [h for _, h, _ in metrics]
    if t:
        head += _reach_heads(_threshold_label("train_acc", t["op"], t["value"]))
    rows = []
    for method, m in summary["methods"].items():
        row = [f"`{method}`", str(len(m["seeds"]))] + [_fmt_range(m["final"].get(k), a) for k, _, a in metrics]
        rows.append(row + (_reach_cells(m, "train_acc") if t else []))
    return _markdown(head, rows)


def nc_table(summary: dict) -> str:
    """Neural collapse at the end of training, one row per method: NC1–NC4 and NC2 of W and of H as ``median
    [min–max]`` over seeds, then the median epochs to every threshold other than training accuracy (NC1's)."""
    metrics = _final_columns(summary, _NC_METRICS)
    keys = [k for k in summary["thresholds"] if k != "train_acc"]
    head = ["method"] + [h for _, h, _ in metrics]
    for key in keys:
        t = summary["thresholds"][key]
        head += _reach_heads(_threshold_label(key, t["op"], t["value"]))
    rows = []
    for method, m in summary["methods"].items():
        row = [f"`{method}`"] + [_fmt_range(m["final"].get(k), a) for k, _, a in metrics]
        rows.append(row + [c for key in keys for c in _reach_cells(m, key)])
    return _markdown(head, rows)


def time_table(summary: dict) -> str:
    """Wall-clock training seconds (evaluation excluded), one row per method, ``median [min–max]`` over seeds:
    the whole run, per epoch, and to the first hit of each threshold (a seed that never reached it: ``∞``)."""
    keys = list(summary["thresholds"])
    head = ["method", "seeds", "training s", "s per epoch"]
    for key in keys:
        t = summary["thresholds"][key]
        head.append(f"s to {_threshold_label(key, t['op'], t['value'])} (first hit)")
    rows = []
    for method, m in summary["methods"].items():
        row = [f"`{method}`", str(len(m["seeds"])), _fmt_range(m.get("wall_s"), False),
               _fmt_range(m.get("seconds_per_epoch"), False)]
        rows.append(row + [_fmt_range(m["reach"][key]["wall_s"], False, "∞") for key in keys])
    return _markdown(head, rows)


def _reach_heads(label: str) -> list[str]:
    return [f"epochs to {label} (first hit)", f"epochs to {label} (sustained)"]


def _reach_cells(m: dict, key: str) -> list[str]:
    """First-hit and sustained epochs (summaries written before the sustained epoch existed: —)."""
    r, kept = m["reach"][key], m.get("sustained", {}).get(key)
    return [_reach_cell(r, m["epochs"]["max"]), "—" if kept is None else _reach_cell(kept, m["epochs"]["max"])]


def paper_table(summary: dict) -> str:
    """The paper's table: training accuracy at ``report_epochs`` as ``median [min–max]`` over seeds."""
    epochs = summary.get("report_epochs", [])
    head = ["method", "seeds"] + [f"train acc @ epoch {e}" for e in epochs]
    rows = [[f"`{method}`", str(len(m["seeds"]))]
            + [_fmt_range(m.get("at_epoch", {}).get(str(e), {}).get("train_acc"), True) for e in epochs]
            for method, m in summary["methods"].items()]
    return _markdown(head, rows)


def _reach_cell(r: dict, max_epoch) -> str:
    ep = r["epoch"]["median"]
    if ep is None:
        ep_s = f">{max_epoch:g}" if max_epoch is not None else "—"
    else:
        ep_s = f"{ep:g}"
    return f"{ep_s} ({r['reached']}/{r['total']})"


def selection_metric_label(metric: str, threshold: float = DEFAULT_TRAIN_ACC_THRESHOLD) -> str:
    """A table header for a selection metric (``experiments/selection.py``)."""
    what = _threshold_label("train_acc", ">=", threshold)
    if metric.startswith("train_acc@"):
        return f"train acc @ epoch {metric.partition('@')[2]}"
    return {"sustained": f"sustained epochs to {what}", "first": f"first epoch at {what}",
            "auc": "mean train error (auc)"}.get(metric, metric)


def _metric_cell(metric: str, v) -> str:
    if v is None:
        return "never" if metric in ("sustained", "first") else "—"
    if metric.startswith("train_acc@"):
        return _fmt(v, True)
    return f"{v:.3g}" if metric == "auc" else f"{v:g}"


def _edge_note(edges: dict | None) -> str:
    """`` (at the grid's edge: lr high)`` for a winner with edge keys, else ``""``."""
    at = [f"{k} {e}" for k, e in (edges or {}).items() if e]
    return f" (at the grid's edge: {', '.join(at)})" if at else ""


def tuning_table(selection: dict) -> str:
    """One row per method × grid point of a tuned compare: the median of the selection metric over the
    selection seeds (and per seed), the median first-hit and sustained epochs to the threshold, the median
    final training loss, the rank; the winner in bold (with its grid edges). Reads selections written before
    ``selection_metric`` existed too (their metric was the first hit)."""
    p = selection.get("primary") or {}
    threshold = p.get("value", DEFAULT_TRAIN_ACC_THRESHOLD)
    metric = selection.get("selection_metric", "first")
    what = _threshold_label(p["key"], p["op"], p["value"]) if p else "threshold"
    others = [m for m in ("first", "sustained") if m != metric]  # beside the metric: the epoch counts it is not
    head = ["method", "grid point", f"{selection_metric_label(metric, threshold)} (reached/total)", "per seed",
            *[f"epochs to {what} ({'first hit' if m == 'first' else m})" for m in others], "final train loss", "rank"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rows in selection.get("tuning", {}).items():
        for r in rows:
            value = r.get("value", r.get("epochs"))
            seeds = ", ".join(_metric_cell(metric, e).replace("never", "—") for e in r["per_seed"])
            epochs = [_metric_cell(m, r[m]) if m in r else "—" for m in others]
            loss = "—" if r["final_train_loss"] is None else f"{r['final_train_loss']:.3g}"
            point = r["point"]
            if r["rank"] == 1:
                point = f"**{point}**{_edge_note(selection.get('edge', {}).get(method))}"
            cells = [f"`{method}`", point, f"{_metric_cell(metric, value)} ({r['reached']}/{r['total']})", seeds,
                     *epochs, loss, str(r["rank"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# figures


def _styles(methods: list[str]) -> dict[str, tuple[str, str]]:
    """Fixed colour and line style per method: the paper's methods keep theirs whatever subset is plotted, and
    two methods never share both (ten colours × four dash patterns, so curves stay apart in print too)."""
    ordered = _METHOD_ORDER + sorted(m for m in methods if m not in _METHOD_ORDER)
    dashes = ["-", "--", "-.", ":"]
    return {m: (f"C{ordered.index(m) % 10}", dashes[ordered.index(m) % 4]) for m in methods}


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


def accuracy_zoom(curves: list[tuple], skip_fraction: float = 0.1) -> tuple[float, float]:
    """The y range of a zoomed accuracy panel: from just below the lowest median after the first epochs (those
    past ``skip_fraction`` of the last epoch, and past epoch 0) to the highest value, at most 1, each with a
    margin of 5% of the range (at least 0.2 points)."""
    last = max(float(c[0].max()) for c in curves)
    after = [c[1][(c[0] > 0) & (c[0] >= skip_fraction * last)] for c in curves]
    after = [a for a in after if a.size] or [c[1] for c in curves]
    low = float(min(a.min() for a in after))
    top = min(1.0, max(float(np.nanmax(c[3])) for c in curves))
    top = max(top, low)
    pad = max(0.05 * (top - low), 0.002)
    return max(0.0, low - pad), top + pad


def _draw(ax, runs, styles, panel: tuple[str, str, str]) -> bool:
    """One panel (title, metric key, scale): a median line and a min–max band per method; False when no method
    has the metric."""
    title, key, scale = panel
    curves = []
    for method, by_seed in runs.items():
        c = _curve(by_seed, key)
        if c is None:
            continue
        ep, med, lo, hi = c
        colour, dash = styles[method]
        ax.plot(ep, med, dash, color=colour, label=method, lw=1.6)
        ax.fill_between(ep, lo, hi, color=colour, alpha=0.15, lw=0)
        curves.append(c)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    if not curves:
        return False
    if scale == "log":
        low = np.concatenate([c[2] for c in curves])
        if np.all(low > 0):
            ax.set_yscale("log")
        else:
            pos = low[low > 0]
            ax.set_yscale("symlog", linthresh=float(pos.min()) if pos.size else 1e-3)
    elif scale in ("zoom", "full"):
        from matplotlib.ticker import FuncFormatter, PercentFormatter

        ax.set_ylim(accuracy_zoom(curves) if scale == "zoom" else (0.0, 1.02))
        percent = PercentFormatter(1.0)
        percent.set_axis(ax.yaxis)  # its decimals follow the axis's range
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, i: "" if y > 1 + 1e-9 else percent(y, i)))  # no 101%
    ax.grid(alpha=0.3, which="both")
    return True


def _legend(fig, axes, n: int) -> None:
    """One legend for the whole figure, below its panels, so that no curve is hidden behind it."""
    handles, labels = next(((h, lab) for ax in axes for h, lab in [ax.get_legend_handles_labels()] if lab), ([], []))
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), n), fontsize=8, frameon=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# what an overview panel without data says instead
_NO_DATA = {"test_acc": "no test set in these runs\n(e.g. the unconstrained-features model)"}


def figure(runs: dict[str, dict[int, list[dict]]], name: str):
    """The matplotlib figure of ``name`` (a key of ``FIGURES``, or ``overview.png``), None when none of its
    panels has data. The caller saves and closes it."""
    plt = _pyplot()
    styles = _styles(list(runs))
    if name == OVERVIEW:
        fig, axes = plt.subplots(2, 4, figsize=(18, 8.6))
        drawn = [_draw(ax, runs, styles, p) for ax, p in zip(axes.flat, _OVERVIEW_PANELS)]
        for ax, ok, (_, key, _) in zip(axes.flat, drawn, _OVERVIEW_PANELS):
            if not ok:  # say why the panel is empty rather than leave a blank square under its title
                ax.set_axis_off()
                ax.text(0.5, 0.5, _NO_DATA.get(key, f"no {key} in these runs' logs"), ha="center", va="center",
                        transform=ax.transAxes, fontsize=9, color="0.35")
        _legend(fig, axes.flat, 6)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        return fig
    panels = FIGURES[name]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    if not any([_draw(ax, runs, styles, p) for ax, p in zip(axes.flat, panels)]):
        plt.close(fig)
        return None
    _legend(fig, axes.flat, 3 * len(panels))
    fig.tight_layout(rect=(0, 0.1 if len(runs) > 3 * len(panels) else 0.07, 1, 1))
    return fig


def plot_figures(runs: dict[str, dict[int, list[dict]]], out_dir: str | Path) -> list[str]:
    """Write one PNG per entry of ``FIGURES`` (those with data) and ``overview.png``; returns file names."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    written = []
    for name in [OVERVIEW, *FIGURES]:
        fig = figure(runs, name)
        if fig is not None:
            dpi = 90 if name == OVERVIEW else 110  # atomic_write: a link planted at the name is replaced, not followed
            atomic_write(out_dir / name, lambda f, fig=fig, dpi=dpi: fig.savefig(f, format="png", dpi=dpi))
            plt.close(fig)
            written.append(name)
    return written


# ----------------------------------------------------------------------------------------------------
# the whole report


def _setup_line(configs: list[dict], runs, vary: set[str] = frozenset()) -> str:
    """``Setup: dataset=..., lr=...; seeds [...]``: the main settings, each from the first run that uses it; a
    setting no run uses (``config.ignored_fields``: no lr under AGD, no delta without a nearest-ETF head) or
    one the grid varies is left out."""
    from .config import TrainConfig, ignored_fields

    if not configs:
        return ""
    keys = ["dataset", "model", "epochs", "batch_size", "optimizer", "lr", "temperature", "delta"]
    used = [(c, ignored_fields(TrainConfig.from_dict(c))) for c in configs]
    parts = []
    for k in keys:
        value = next((c.get(k) for c, ignored in used if k not in ignored), None)
        if value is not None and k not in vary:
            parts.append(f"{k}={value}")
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    return f"Setup: {', '.join(parts)}; seeds {seeds}."


def _excluded_lines(excluded: list[dict]) -> list[str]:
    """The report's note on runs left out (none when none were)."""
    if not excluded:
        return []
    lines = [f"**Left out**: {len(excluded)} run(s) whose log, checkpoint or config is incomplete or invalid (the "
             "table has fewer seeds):", ""]
    return lines + [f"- `{x['run']}`: {x['why']}" for x in excluded] + [""]


def compare_settings(out_dir: str | Path) -> dict:
    """The comparison's ``config.yaml`` (``{}`` when there is none), with the keys the report reads checked as
    ``compare`` checks them: ``methods`` (names), ``train_acc_threshold`` (in (0, 1]), ``report_epochs`` (whole
    epochs, each once, none past the runs' last epoch), ``focus`` (a name) and ``variants`` (a mapping). A file
    that is malformed or breaks a rule is a one-line ``ValueError`` naming the file and the key."""
    from .config import load_config

    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        return {}
    d = load_config(path)

    def refuse(key: str, rule: str):
        raise ValueError(f"{path}: {key} must be {rule}; got {d[key]!r} (fix or delete the key, or rerun the compare)")

    if "methods" in d and not (isinstance(d["methods"], list) and all(isinstance(m, str) for m in d["methods"])):
        refuse("methods", "a list of method names")
    acc = d.get("train_acc_threshold")
    if acc is not None and not (isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 < acc <= 1):
        refuse("train_acc_threshold", "a number in (0, 1] (a fraction, 0.99 for 99%)")
    for key, tp, words in (("focus", str, "a method name or none"), ("variants", dict, "a mapping of variants")):
        if d.get(key) is not None and not isinstance(d[key], tp):
            refuse(key, words)
    try:
        report_epochs = check_report_epochs(d.get("report_epochs"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    grid = d.get("grid") if isinstance(d.get("grid"), dict) else {}
    grid_epochs = grid.get("epochs") if isinstance(grid.get("epochs"), list) else []
    lengths = [e for e in [d.get("epochs"), *grid_epochs] if isinstance(e, int) and not isinstance(e, bool)]
    if report_epochs and lengths and report_epochs[-1] > max(lengths):
        refuse("report_epochs", f"epochs the runs reach (at most epochs={max(lengths)})")
    return d


def _compare_setting(out_dir: Path, key: str):
    """``key`` of the comparison's ``config.yaml`` (:func:`compare_settings`; None if it is not set)."""
    return compare_settings(out_dir).get(key)


def report_thresholds(out_dir: str | Path) -> dict[str, tuple[str, float]]:
    """:func:`default_thresholds` of the runs' configs, with the comparison's ``train_acc_threshold`` (its
    ``config.yaml``) when it set one."""
    thresholds = default_thresholds(run_configs(out_dir))
    acc = _compare_setting(Path(out_dir), "train_acc_threshold")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 < acc <= 1:
        thresholds["train_acc"] = (">=", float(acc))
    return thresholds


_METRIC_RULE = {
    "sustained": "the lowest median sustained epochs to the threshold (the first evaluated epoch from which "
                 "training accuracy stays at or above it to the end of the run; a run that ends below it never "
                 "reached it)",
    "first": "the lowest median epochs to the threshold (its first evaluation at or above it, even if it falls "
             "back later)",
    "auc": "the lowest median training error averaged over the evaluated epochs",
}


def _selection_section(selection: dict) -> list[str]:
    seeds = selection.get("selection_seeds", [])
    edges = selection.get("edge", {})
    chosen = "; ".join(f"`{m}`: {folder}{_edge_note(edges.get(m))}"
                       for m, folder in selection.get("folders", {}).items())
    grid = ", ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in selection.get("grid", {}).items())
    grids = selection.get("grids") or {}
    extended = any(g != selection.get("grid") for g in grids.values())
    md = ["## Tuning", "",
          f"Grid: {grid}; the same grid for every method"
          f"{', extended per method where its winner sat at an edge (below)' if extended else ''}. "
          f"Selected: {chosen}.", ""]
    if selection.get("tuning"):
        metric = selection.get("selection_metric", "first")
        rule = _METRIC_RULE.get(metric) or f"the highest median training accuracy at epoch {metric.partition('@')[2]}"
        md += [f"Each grid point ran on the selection seeds {seeds} (never among the report seeds). Per method the "
               f"point with {rule} wins (selection metric `{metric}`; a point whose median seed never got there "
               "ranks last, and so does a diverged run); ties go to the lower median final training loss, then to "
               "the earlier point. The results below are the report seeds' runs at each method's selected point.",
               "", tuning_table(selection), ""]
    md += _edge_lines(selection)
    return md


def _edge_lines(selection: dict) -> list[str]:
    """What the grid's edges did: extensions made, ones refused and why, winners still at an edge."""
    md = []
    done = selection.get("extensions") or []
    if done:
        md += ["Extended beyond an edge (each new value ran on the selection seeds, then the method was "
               "reselected): " + "; ".join(f"`{x['method']}` {x['key']} = {x['value']} ({x['side']}, {x['step']}, "
                                           f"round {x['round']})" for x in done) + ".", ""]
    refused = selection.get("not_extended") or []
    if refused:
        md += ["Not extended: " + "; ".join(f"`{x['method']}` {x['key']} ({x['side']}): {x['why']}"
                                            for x in refused) + ".", ""]
    words = [k for k, v in (selection.get("grid") or {}).items()
             if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)]
    if words and selection.get("tuning"):
        md += [f"No edges on {', '.join(words)}: {'its values are' if len(words) == 1 else 'their values are'} "
               "not all numbers, so a winner there is never marked or extended.", ""]
    at = {m: e for m, e in (selection.get("edge") or {}).items() if any(e.values())}
    if at:
        md += ["**At the grid's edge**: " + "; ".join(f"`{m}` ({', '.join(f'{k} {x}' for k, x in e.items() if x)})"
                                                      for m, e in at.items())
               + ". Such a winner may not be the method's best setting: a value beyond the edge was not tried "
               "(`--extend-edges N` extends the grid until the winners are interior).", ""]
    return md


def _verdict(out_dir: Path, runs: dict[str, dict[int, list[dict]]], summary: dict, focus: str | None) -> dict | None:
    """The focus method against the best other one (``verdict.build_verdict``), or None."""
    if focus == "auto":
        saved = _compare_setting(out_dir, "focus")
        if isinstance(saved, str) and saved not in runs and saved != "none":
            return None  # the comparison's focus has no complete runs in this report
        focus = saved if isinstance(saved, str) else "auto"
    focus = resolve_focus(focus, list(runs))
    if focus is None or "train_acc" not in summary["thresholds"]:
        return None
    variants = _compare_setting(out_dir, "variants")
    families = {name: spec.get("method") for name, spec in variants.items()
                if isinstance(spec, dict)} if isinstance(variants, dict) else {}
    data = {}
    for method, by_seed in runs.items():
        kept = summary["methods"][method]["sustained"]["train_acc"]["epoch"]["per_seed"]
        finals = [recs[-1] for recs in by_seed.values()]
        data[method] = {"seeds": list(by_seed), "sustained": [math.inf if e is None else e for e in kept],
                        "test_acc": [_num(f["test_acc"]) if f.get("test_acc") is not None else None for f in finals],
                        "train_loss": [_num(f.get("train_loss")) for f in finals],
                        "diverged": summary.get("diverged", {}).get(method, [])}
    return build_verdict(data, focus, summary["thresholds"]["train_acc"]["value"], families)


def _missing_runs(out_dir: Path, runs: dict[str, dict[int, list[dict]]]) -> dict[str, list[int]]:
    """``{method: [seed, ...]}``: the runs the comparison's ``config.yaml`` asks for (``methods`` x ``seeds``, the
    report seeds of a tuned one) that are not in ``runs``: not started, under way (queued or running, e.g. as
    Slurm jobs) or left out. ``{}`` without a ``config.yaml`` that lists both."""
    try:
        methods, seeds = _compare_setting(out_dir, "methods"), _compare_setting(out_dir, "seeds")
    except ValueError:
        return {}
    if not isinstance(methods, list) or not isinstance(seeds, list):
        return {}
    wanted = [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)]
    missing = {str(m): [s for s in wanted if s not in runs.get(str(m), {})] for m in methods}
    return {m: seeds for m, seeds in missing.items() if seeds}


def _partial_runs_text(missing: dict[str, list[int]], reported: int) -> str:
    """One sentence for a report that lacks runs (:func:`_missing_runs`)."""
    listed = "; ".join(f"`{m}` seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for m, s in missing.items())
    return (f"{reported} run{'s' if reported != 1 else ''} reported; missing: {listed} (not started, under way — "
            "queued or running, e.g. as Slurm jobs — or left out below). The verdict and the tables use the runs "
            "that are here. Run the same `ncguide compare` command (with its launcher) to go on, or wait for its "
            "jobs; `ncguide report` then writes the full report.")


def _run_lengths(out_dir: Path, runs: dict[str, dict[int, list[dict]]]) -> dict[str, list[list[int]]]:
    """``{method: [[epochs, eval_every], ...]}``: the distinct lengths of the reported runs (their ``config.json``;
    a run without one is left out)."""
    folders = run_folders(out_dir)
    lengths = {}
    for method, by_seed in runs.items():
        pairs = set()
        for seed in by_seed:
            try:
                cfg = json.loads((folders[method][seed] / "config.json").read_text())
                pairs.add((int(cfg["epochs"]), int(cfg.get("eval_every", 1))))
            except (OSError, KeyError, TypeError, ValueError):
                continue
        lengths[method] = [list(x) for x in sorted(pairs)]
    return lengths


def write_report(out_dir: str | Path, thresholds: dict[str, tuple[str, float]] | None = None,
                 report_epochs: list[int] | None = None, focus: str | None = "auto") -> dict:
    """Regenerate ``summary.json``, ``report.md`` and the PNGs in ``out_dir`` from its run logs; returns
    the summary. ``thresholds`` defaults to :func:`report_thresholds`;
    ``report_epochs`` to those of the comparison's ``config.yaml``, else the last epoch and its midpoint.
    ``focus``: the method of the verdict (``experiments/verdict.py``): ``"auto"`` takes the comparison's
    ``focus`` (its ``config.yaml``), else ``nearest-etf`` when reported; ``None``/``"none"``: no verdict."""
    out_dir = Path(out_dir)
    excluded: list[dict] = []
    runs = load_runs(out_dir, excluded)
    configs = run_configs(out_dir)
    selection = read_selection(out_dir)
    partial = selection is None and tuning_under_way(out_dir)
    if partial:
        focus = None  # no method has its winner: no verdict between grid points
    if report_epochs is None:
        report_epochs = check_report_epochs(_compare_setting(out_dir, "report_epochs"))
    folders = run_folders(out_dir)
    diverged = {m: [s for s, folder in by_seed.items() if (folder / DIVERGED).is_file()]
                for m, by_seed in folders.items()}
    summary = summarize(runs, thresholds or report_thresholds(out_dir), report_epochs, diverged)
    summary["excluded"] = excluded
    if partial:
        summary["partial"] = PARTIAL_TUNING
    elif missing := _missing_runs(out_dir, runs):
        summary["partial"] = _partial_runs_text(missing, sum(map(len, runs.values())))
    summary["diverged"] = {m: seeds for m, seeds in diverged.items() if seeds}
    summary["machines"] = summarize_machines({folders[m][s].relative_to(out_dir).as_posix(): read_starts(folders[m][s])
                                              for m, by_seed in runs.items() for s in by_seed})
    if selection is not None:
        summary["selected"] = selection.get("selected", {})
        summary["tuning"] = selection.get("tuning", {})
        summary["selection_seeds"] = selection.get("selection_seeds", [])
        summary["selection_metric"] = selection.get("selection_metric", "first")
        summary["edge"] = selection.get("edge", {})
    summary["verdict"] = _verdict(out_dir, runs, summary, focus)
    summary["run_lengths"] = _run_lengths(out_dir, runs)  # verdict.length_caution: runs of unlike lengths
    atomic_write_text(out_dir / "summary.json", json_text(summary, indent=2) + "\n")
    figures = plot_figures(runs, out_dir)
    t = summary["thresholds"]
    reach = "; ".join(_threshold_label(k, v["op"], v["value"]) for k, v in t.items())
    md = ["# ncguide comparison", ""]
    if partial:
        md += [f"**Partial: the tuning is under way.** {PARTIAL_TUNING}", ""]
    elif "partial" in summary:
        md += [f"**Partial: not every run of the comparison is in this report.** {summary['partial']}", ""]
    if summary["verdict"] is not None:
        md += [*verdict_lines(summary["verdict"], summary.get("edge")), ""]
    if (caution := length_caution(summary["run_lengths"])) is not None:
        md += [caution, ""]
    grid = selection["grid"] if selection else _compare_setting(out_dir, "grid") if partial else {}
    md += [_setup_line(configs, runs, set(grid)), ""]
    if selection is not None:
        md += _selection_section(selection)
    epochs = ", ".join(map(str, summary["report_epochs"]))
    md += [
        "## Training accuracy at fixed epochs",
        "",
        paper_table(summary),
        "",
        f"As in the paper: training accuracy at epochs {epochs}, median [min–max] over seeds (— where a seed did "
        "not evaluate that epoch). The epochs to the training-accuracy threshold are in the summary below.",
        "",
        "## Summary",
        "",
        summary_table(summary),
        "",
        *([f"Diverged runs (stopped on a non-finite loss; their values are those of their last evaluation): "
           f"{'; '.join(f'`{m}` seeds {s}' for m, s in summary['diverged'].items())}.", ""]
          if summary["diverged"] else []),
        *_excluded_lines(excluded),
        "Final values are those of each run's last evaluation, as median [min–max] over seeds.",
        "",
        f"Thresholds: {reach}. *Epochs to (first hit)* gives the median first evaluated epoch at which a seed "
        "reached the threshold and, in brackets, how many seeds reached it; *(sustained)* the median first "
        "evaluated epoch from which a seed stays at the threshold to the end of its run (a seed that ends "
        "below it, or diverged, never reached it for good). A seed that never reached it counts as "
        "infinitely late, so `>E` means the median seed did not reach it within the E epochs run. "
        "Exact numbers, including per-seed values, are in `summary.json`.",
        "",
        "## Neural collapse",
        "",
        nc_table(summary),
        "",
        "Training-set NC metrics of the last evaluation, on the features the classifier sees, median [min–max] "
        "over seeds; the epochs to the NC thresholds count as above.",
        "",
        "## Wall-clock time",
        "",
        WALL_CLOCK_CAVEAT,
        "",
        *machine_lines(summary["machines"]),
        "",
        time_table(summary),
        "",
        "Training seconds exclude evaluation, median [min–max] over seeds; *s to (first hit)* is the training time "
        "at the first evaluation at the threshold (`∞`: a seed that never reached it).",
        "",
        "## Figures",
        "",
        "Median over seeds (line) and min–max over seeds (band). Accuracy is drawn twice: on 0–100% and zoomed "
        "from just below the lowest median after the first epochs; NC2 of the features H and of the classifier W "
        "have a panel each.",
        "",
    ]
    md += [f"![{f.removesuffix('.png')}]({f})\n" for f in figures]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    return summary

"""Runs of methods × seeds side by side, optionally each method tuned on a grid first, then the report.

    summary = run_compare({"dataset": "mnist1d", "model": "cnn1d", "epochs": 30},
                          methods=["standard", "fixed-etf", "nearest-etf"], seeds=3, out_dir="out")
    summary = run_compare(base, methods, seeds=5, out_dir="out", grid={"lr": [3e-4, 1e-3, 3e-3, 1e-2]})

Without a grid, every method runs at ``base`` on the report seeds into ``runs/<method>/seed-<s>/``.

With a grid (``{key: [values]}``, any TrainConfig fields that change results), the comparison is *best
against best* with the same budget for every method:

1. *selection*: every method runs at every grid point on the selection seeds (``selection_seeds``, by
   default 2 seeds 1000, 1001, never among the report seeds) into ``runs/<method>/<point>/seed-<s>/``,
   ``<point>`` = ``key=value[,key=value...]``;
2. per method the grid point with the lowest median of the *selection metric* wins (``selection.py``:
   by default the *sustained* epochs to training accuracy ≥ 0.99, the first epoch from which a run stays
   there to its end; also ``first``, ``auc``, ``train_acc@E``); ties go to the lower median final training
   loss, then to the earlier grid point. A point whose median seed never got there ranks last, and so does
   a diverged run. A winner at either end of a numeric grid axis is *at the grid's edge*; with
   ``extend_edges=N`` that method's grid grows one step beyond the edge (the new points run on the
   selection seeds, then it is reselected), up to N times;
3. *report*: every method runs on the report seeds at its winning point; the report shows only these runs,
   after the tuning table (``selection.json``, also copied into ``summary.json``), and opens with the
   verdict (``verdict.py``: the focus method against the fastest other one, with its uncertainty).

Methods are names of ``ncguide.heads.METHODS`` or *variants*: ``{"nearest-etf-freeze": {"method":
"nearest-etf", "freeze_after": 5}}`` names a method with its own overrides (its folder is its name).

Files in ``out_dir``: ``runs/`` (each run's ``metrics.jsonl``, ``config.json``, ``checkpoint.pt``, written by
:func:`ncguide.experiments.train.train`), ``config.yaml`` (the resolved comparison; ``ncguide compare --config
out/config.yaml --out out`` repeats it), ``selection.json`` (with a grid) and the report (``summary.json``,
``report.md``, ``*.png``). Re-running on the same ``out_dir`` reuses finished runs and resumes unfinished ones;
it may add methods, seeds or grid values.

Where the runs train is the launcher's business (``launch.py``; ``launch=``): one after the other in this
process (the default), up to N at once in child processes (``{"jobs": N}``), or as Slurm jobs (``{"launcher":
"slurm", ...}``, ``slurm.py``). Each method is a pipeline: its selection runs, its winner, its report runs,
which start as soon as its own winner is known. The results do not depend on the launcher.

A run's identity is the config saved in its checkpoint (``config.json`` is only a copy for people, and a
run's data file — ``npz:`` — is fingerprinted in the checkpoint too): before anything trains, every run
folder in ``out_dir/runs`` must hold a checkpoint of the config this comparison expects there (runs of
methods no longer listed: the same experiment up to method, seed and grid keys), else it is an error —
a folder whose identity cannot be established is refused, never reused.

A comparison holds ``out_dir``'s lock (``locks.py``) from its first write to its end, and each run its own
folder's: a second ``compare`` (or a ``train``) into them raises ``locks.RunLockedError`` naming the holder.
A reused finished run's log is first made to agree with its checkpoint (``runlog.finished_record``); runs
whose log is still incomplete are left out of the report, each with a warning line.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..heads import METHODS
from .build import check_all_buildable
from .checkpoint import CHECKPOINT, RUNTIME_FIELDS, config_diff, load_checkpoint
from .config import (
    SEED_MAX,
    ConfigError,
    Rule,
    TrainConfig,
    _shown,
    field_names,
    ignored_fields,
    ignored_reason,
    non_default,
    read_integer,
    read_value,
    with_defaults,
)
from .files import atomic_write_text, check_no_links, json_text, read_jsonl
from .launch import LaunchConfig, Run, drive, make_launcher, parse_launch
from .locks import rank0_folder_lock
from .report import (
    DEFAULT_TRAIN_ACC_THRESHOLD,
    DIVERGED,
    SELECTION,
    check_report_epochs,
    selection_metric_label,
    summary_table,
    write_report,
)
from .runlog import METRICS, log_has_results
from .selection import (
    DEFAULT_SELECTION_METRIC,
    extend_axis,
    metric_epoch,
    parse_selection_metric,
    select_point,
    winner_edges,
)
from .train import train
from .verdict import resolve_focus

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SEEDS",
    "DEFAULT_SELECTION_SEEDS",
    "SELECTION_SEED_BASE",
    "parse_methods",
    "parse_seeds",
    "parse_grid",
    "parse_variants",
    "point_name",
    "run_dir",
    "select_point",
    "run_compare",
]

DEFAULT_METHODS = ("standard", "fixed-etf", "nearest-etf")
DEFAULT_SEEDS = 3
DEFAULT_SELECTION_SEEDS = 2
SELECTION_SEED_BASE = 1000  # selection seed i is 1000 + i: disjoint from the usual report seeds 0..N-1
_NOT_GRID = {"method", "seed"} | RUNTIME_FIELDS  # keys a grid may not vary
_SEEDS_HELP = "give a count N (seeds 0..N-1) or a list like 0,1,2"
MAX_SEEDS = 1000  # seeds per comparison (a count beyond it is a typo, and would exhaust memory listing them)


def parse_seeds(seeds: int | str | Iterable[int], base: int = 0, what: str = "seeds") -> list[int]:
    """``3`` or ``"3"`` → ``[base, base+1, base+2]``; ``"0,4"`` or ``[0, 4]`` → ``[0, 4]``. Read by the rule of the
    config's integers: a count in 1..``MAX_SEEDS``, or distinct seeds in 0..2**32 - 1 (the ``seed`` field's range)."""
    bad = f"bad {what} {_shown(seeds)}; " + _SEEDS_HELP.replace("0..N-1", f"{base}..{base}+N-1")
    if isinstance(seeds, str) and "," in seeds:
        seeds = seeds.split(",")
    if isinstance(seeds, (list, tuple)):
        try:
            out = [read_integer(what, s, Rule(lo=0, hi=SEED_MAX, words=f"seeds in 0..{SEED_MAX}")) for s in seeds]
        except ConfigError as e:
            raise (ValueError(bad) if str(e).startswith("bad value") else e) from None
        if not out or len(set(out)) != len(out):
            raise ValueError(f"{what} must be a non-empty list without repeats (got {out})")
        return out
    try:
        count = read_integer(what, seeds, Rule(lo=1, hi=MAX_SEEDS, words=f"a count >= 1 (at most {MAX_SEEDS}) or a "
                                                                          "list of seeds"))
    except ConfigError as e:
        raise (ValueError(bad) if str(e).startswith("bad value") else e) from None
    return list(range(base, base + count))


def parse_variants(variants: Mapping[str, Mapping] | None) -> dict[str, dict]:
    """``{name: {"method": m, key: value, ...}}`` → the same, checked: a folder name, a known method,
    TrainConfig keys only (not ``seed``). A variant named after a method (``{"nearest-etf": {"stratified":
    True}}``) gives that method its own settings; its ``method`` is its name."""
    out = {}
    if variants is None:
        return out
    if not isinstance(variants, Mapping):
        raise ValueError(f"variants must map a name to its settings, e.g. {{nearest-etf-freeze: {{method: "
                         f"nearest-etf, freeze_after: 5}}}}; got {variants!r}")
    for name, spec in variants.items():
        if not isinstance(name, str) or not _safe_name(name):
            raise ValueError(f"bad variant name {name!r}: use letters, digits, '-', '_', '.', '+'")
        if name in METHODS and isinstance(spec, Mapping):
            if spec.get("method", name) != name:
                raise ValueError(f"variant {name!r} is named after a method, so it sets that method's own settings "
                                 f"and cannot make it method {spec['method']!r}; give it another name")
            spec = {"method": name, **spec}
        if not isinstance(spec, Mapping) or spec.get("method") not in METHODS:
            raise ValueError(f"variant {name!r} needs `method:` one of {', '.join(METHODS)}; got {spec!r}")
        bad = sorted(set(spec) - set(field_names()) | ({"seed"} & set(spec)))
        if bad:
            raise ValueError(f"variant {name!r}: {bad[0]!r} is not a setting a variant may change")
        out[name] = dict(spec)
    return out


def parse_methods(methods: str | Iterable[str], variants: Mapping[str, Mapping] | None = None) -> list[str]:
    """``"standard,nearest-etf"`` or a list → a list of distinct method (or variant) names."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"methods must be a list of method names, e.g. [standard, nearest-etf] (or the text "
                         f"standard,nearest-etf); got {methods!r}")
    methods = list(methods)
    known = [*METHODS, *(variants or {})]
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or methods}; valid methods: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"method listed twice in {methods}; list each method once")
    return methods


def parse_grid(grid: Mapping[str, object] | Iterable[str] | None) -> dict[str, list]:
    """``{"lr": [1e-3, 1e-2]}`` or CLI items ``["lr=1e-3,1e-2"]`` → ``{key: [typed values]}`` (values
    coerced as ``--set`` does; at least one value per key, no repeats, no method/seed/runtime key)."""
    if grid is None:
        return {}
    if isinstance(grid, str):  # one CLI item, e.g. from --set grid=lr=0.1,0.2
        grid = [grid]
    if isinstance(grid, Mapping):
        items = list(grid.items())
    elif not isinstance(grid, (list, tuple)):
        raise ValueError(f"grid must map keys to values, e.g. {{lr: [0.001, 0.01]}}, or be --grid items KEY=V1,V2; "
                         f"got {grid!r}")
    else:
        items = []
        for item in grid:
            key, eq, values = str(item).partition("=")
            if not eq or not key.strip() or not values.strip():
                raise ValueError(f"bad --grid {item!r}; write it as KEY=V1,V2,..., e.g. --grid lr=1e-3,3e-3,1e-2")
            items.append((key.strip(), [v.strip() for v in values.split(",")]))
    out: dict[str, list] = {}
    for key, values in items:
        if key in out:
            raise ValueError(f"grid key {key!r} given twice; list all its values once: {key}=V1,V2,...")
        if key not in field_names() or key in _NOT_GRID:
            why = "a runtime setting that does not change results" if key in RUNTIME_FIELDS else "not a grid key"
            raise ValueError(f"grid key {key!r} is {why}; a grid varies config fields such as lr, weight_decay, "
                             "temperature (methods and seeds have their own options)")
        if not isinstance(values, (list, tuple)):
            values = [values]
        typed = []
        for v in values:
            if isinstance(v, (dict, list, tuple)):
                raise ValueError(f"grid values must be single values; got {v!r} for {key!r}")
            try:
                typed.append(read_value(key, v))  # the schema's rule, as for --set and files
            except ConfigError as e:  # named as the grid's, so the command says where it came from
                raise ConfigError("grid", str(e)) from None
        if not typed:
            raise ValueError(f"grid key {key!r} has no values")
        names = [_value_text(v) for v in typed]
        if len(set(names)) != len(names):
            raise ValueError(f"grid key {key!r} lists a value twice: {values!r}")
        for v, name in zip(typed, names):
            if not _safe_name(name):
                raise ValueError(f"grid value {v!r} of {key!r} cannot name a folder; use letters, digits, '-', "
                                 "'_', '.', '+'")
        out[key] = typed
    return out


def point_name(point: Mapping[str, object]) -> str:
    """A grid point's folder name: ``lr=0.001`` or ``lr=0.001,weight_decay=0.0005``."""
    return ",".join(f"{k}={_value_text(v)}" for k, v in point.items())


def run_dir(out_dir: str | Path, method: str, seed: int, point: Mapping[str, object] | None = None) -> Path:
    """``out_dir/runs/<method>/seed-<seed>``, or ``out_dir/runs/<method>/<point>/seed-<seed>`` on a grid; a
    symbolic link planted on the way (``runs``, a method's folder...) is refused (``files.UnsafeFileError``)."""
    base = Path(out_dir) / "runs" / method
    return check_no_links(out_dir, (base / point_name(point) if point else base) / f"seed-{seed}")




def run_compare(
    base: TrainConfig | dict,
    methods: str | Iterable[str] = DEFAULT_METHODS,
    seeds: int | str | Iterable[int] = DEFAULT_SEEDS,
    out_dir: str | Path = "out",
    *,
    grid: Mapping[str, object] | Iterable[str] | None = None,
    selection_seeds: int | str | Iterable[int] = DEFAULT_SELECTION_SEEDS,
    variants: Mapping[str, Mapping] | None = None,
    report_epochs: Iterable[int] | None = None,
    train_acc_threshold: float = DEFAULT_TRAIN_ACC_THRESHOLD,
    selection_metric: str = DEFAULT_SELECTION_METRIC,
    extend_edges: int = 0,
    focus: str | None = "auto",
    resume: bool = True,
    progress: str = "auto",
    log: Callable[[str], None] = print,
    report: bool = True,
    check_only: bool = False,
    launch: LaunchConfig | Mapping | None = None,
) -> dict:
    """Train every method × seed of ``base`` into ``out_dir/runs/`` (see the module docstring), then write
    the report.

    ``base``: a TrainConfig or a dict of its fields (``method`` and ``seed`` are replaced per run).
    ``seeds``: the report seeds, a count N (seeds 0..N-1) or a list. ``grid``: ``{key: [values]}`` (or CLI
    items ``"key=v1,v2"``) to tune every method on ``selection_seeds`` (a count N: seeds 1000..1000+N-1, or
    a list disjoint from ``seeds``) before the report seeds run at each method's winner. ``variants``: named
    methods with their own overrides. ``report_epochs``: epochs of the paper-style accuracy table (default
    the last epoch and its midpoint). ``train_acc_threshold``: the training accuracy the selection ranks by
    (epochs to reach it) and the report counts epochs to. ``selection_metric``: how a grid point is ranked
    (``sustained``, ``first``, ``auc``, ``train_acc@E``; ``experiments/selection.py``). ``extend_edges``: up
    to this many times, extend the grid of each method whose winner sits at a numeric axis's edge by one
    step beyond it, run the new points on the selection seeds and reselect. ``focus``: the method of the
    report's verdict against the best other one (``"auto"``: ``nearest-etf`` when compared; ``None`` or
    ``"none"``: no verdict; ``experiments/verdict.py``). Finished runs are reused and unfinished ones
    resumed when ``resume``; ``resume=False`` retrains everything. ``log`` gets one line per run. Returns the
    report summary (:func:`ncguide.experiments.report.summarize`), or ``{}`` when ``report=False``.
    ``check_only``: check everything as above, train nothing, and return the resolved comparison settings.
    ``launch``: where the runs train (``launch.parse_launch``: ``{"jobs": 2}``, ``{"launcher": "slurm",
    "slurm_time": "2:00:00", ...}``); the default trains them one after another in this process. Runs that
    fail in child processes or Slurm jobs raise ``launch.RunsFailedError`` once the others are done; without
    waiting for Slurm (``"wait": False``) the return value is ``{}`` until every run has finished.
    Bad settings raise :class:`ncguide.experiments.config.ConfigError` (a ``ValueError``) naming the key.
    """
    base_dict = base.to_dict() if isinstance(base, TrainConfig) else dict(base)
    # set by the caller, to other values than the defaults (a resolved config.yaml lists every default)
    given = set() if isinstance(base, TrainConfig) else non_default(base_dict) - {"method", "seed"}
    base_dict.pop("method", None)
    base_dict.pop("seed", None)
    variants = _keyed("variants", parse_variants, variants)
    methods = _keyed("methods", parse_methods, methods, variants)
    seeds, grid = _keyed("seeds", parse_seeds, seeds), _keyed("grid", parse_grid, grid)
    sel_seeds = _keyed("selection_seeds", parse_seeds, selection_seeds, SELECTION_SEED_BASE, "selection_seeds")
    if grid and set(sel_seeds) & set(seeds):
        raise ConfigError("selection_seeds", f"selection_seeds {sorted(set(sel_seeds) & set(seeds))} are also "
                                             "report seeds; the two sets must be disjoint (selection seeds count "
                                             "from 1000 by default)")
    sel_given, sel_seeds = sel_seeds, sel_seeds if grid else []
    for name, spec in variants.items():
        clash = sorted(set(spec) & set(grid))
        if clash and name in methods:
            raise ConfigError("variants", f"variant {name!r} fixes {clash[0]!r}, which the grid varies; drop one "
                                          "of them")
    report_epochs = _keyed("report_epochs", check_report_epochs, report_epochs)
    if isinstance(train_acc_threshold, bool) or not 0 < train_acc_threshold <= 1:
        raise ConfigError("train_acc_threshold", f"train_acc_threshold must be a fraction in (0, 1]; got "
                                                 f"{train_acc_threshold!r}")
    train_acc_threshold = float(train_acc_threshold)
    # -- selection rule, edges and verdict (selection.py, verdict.py) --
    selection_metric = _keyed("selection_metric", parse_selection_metric, selection_metric)
    extend_edges = _keyed("extend_edges", _parse_rounds, extend_edges)
    focus = _keyed("focus", _parse_focus, focus, methods)

    points = _grid_points(grid)

    def config(method: str, point: dict, seed: int) -> TrainConfig:
        spec = variants.get(method)
        if spec is None:
            return TrainConfig.from_dict({**base_dict, "method": method, **point, "seed": seed})
        try:
            return TrainConfig.from_dict({**base_dict, **spec, **point, "seed": seed})
        except ConfigError as e:
            if e.key.partition(".")[0] in spec:  # the variant's own setting, not the base config's
                raise ConfigError("variants", f"variant {method!r}: {e}") from None
            raise

    # every run's config is checked before anything trains; seed-major order within each phase, so an
    # interrupted comparison has every method at the first seeds
    grid_points = [(s, p, m) for s in sel_seeds for p in (points if len(points) > 1 else []) for m in methods]
    selection = [Run("selection", m, p, s, config(m, p, s), run_dir(out_dir, m, s, p), order=(0, 0, i),
                     tag=_tag("selection", i, len(grid_points), m, p, s)) for i, (s, p, m) in enumerate(grid_points)]
    candidates = {m: {point_name(p): p for p in points} for m in methods}
    # the report runs could use any point: check them all now, including what only a build would reject
    # (K > d for ETF heads, model vs data, head options), so no run trains before a later one fails
    planned = {(m, point_name(p)): config(m, p, seeds[0]) for m in methods for p in points}
    _check_grid_keys_used(planned, grid)
    _check_report_epochs_reached(planned, report_epochs)
    check_all_buildable(planned.values())
    _check_run_lengths(grid, selection_metric)
    if metric_epoch(selection_metric) is not None and len(points) > 1:
        _check_metric_epoch(selection_metric, [r.cfg for r in selection])
    notes = _ignored_settings(given, variants, planned)
    default_sel = parse_seeds(DEFAULT_SELECTION_SEEDS, SELECTION_SEED_BASE)
    notes += _unused_options(variants, methods, grid, selection_seeds=(sel_given, default_sel),
                             extend_edges=(extend_edges, 0),
                             selection_metric=(selection_metric, parse_selection_metric(DEFAULT_SELECTION_METRIC)))
    runs = {r.path: r.cfg for r in selection}  # every run folder the comparison may train: where the launcher looks
    runs.update({run_dir(out_dir, m, s, p): config(m, p, s) for m in methods for p in points for s in seeds})
    launcher = make_launcher(parse_launch(launch), runs, out_dir=Path(out_dir).absolute(), resume=resume,
                             progress=progress, log=log, train_fn=lambda *a, **k: train(*a, **k))
    if check_only:
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return {"methods": methods, "seeds": seeds, **({"grid": grid, "selection_seeds": sel_seeds} if grid else {}),
                **({"variants": {k: _typed(config(k, points[0], seeds[0]), v) for k, v in variants.items()
                                 if k in methods}} if variants else {}),
                **({"report_epochs": report_epochs} if report_epochs is not None else {}),
                "train_acc_threshold": train_acc_threshold, "selection_metric": selection_metric,
                **({"extend_edges": extend_edges} if grid else {}), "focus": focus}
    out_dir = Path(out_dir)
    rule = _Rule(selection_metric, extend_edges, focus)
    with rank0_folder_lock(out_dir):  # creates out_dir
        return _compare_locked(out_dir, methods, seeds, points, grid, sel_seeds, variants, report_epochs,
                               train_acc_threshold, base_dict, config, selection, candidates, runs, launcher,
                               resume, log, report, rule, notes)


@dataclass(frozen=True)
class _Rule:
    """How winners are picked and reported: the selection metric, edge extensions, the verdict's focus."""

    metric: str
    extend_edges: int
    focus: str


def _compare_locked(out_dir, methods, seeds, points, grid, sel_seeds, variants, report_epochs, threshold,
                    base_dict, config, selection, candidates, runs, launcher, resume, log, report, rule,
                    notes) -> dict:
    """run_compare's work once its arguments are checked, under ``out_dir``'s lock."""
    _check_existing_runs(out_dir, runs, base_dict, grid, variants, resume)
    for note in notes:  # every check has passed: no warning comes before an error
        warnings.warn(note, stacklevel=3)
    _write_compare_config(out_dir, base_dict, methods, seeds, grid, sel_seeds, variants, report_epochs, threshold,
                          rule)

    winners: dict[str, dict] = {m: points[0] for m in methods}
    tuned: dict[str, dict] = {}  # method -> how its selection went (_tune_method)
    if not grid:
        (out_dir / SELECTION).unlink(missing_ok=True)
    elif len(points) == 1:  # nothing to select; with more points selection.json is written once all are selected
        atomic_write_text(out_dir / SELECTION, json_text({
            "primary": None, "selection_metric": rule.metric, "grid": grid, "selection_seeds": [],
            "report_seeds": seeds, "selected": {m: points[0] for m in methods},
            "folders": {m: point_name(points[0]) for m in methods},
            "edge": {m: winner_edges(grid, points[0]) for m in methods}, "tuning": {}}, indent=2) + "\n")

    def pipeline(m: str) -> Iterator[list[Run]]:
        """One method's stages: its selection runs, its winner (more selection runs while its grid grows
        beyond an edge), then its report runs at the winner."""
        mine = [r for r in selection if r.method == m]
        if mine:
            yield mine
            tuned[m] = yield from _tune_method(out_dir, m, methods.index(m), grid, sel_seeds, candidates[m], config,
                                               threshold, rule, log)
            winners[m] = tuned[m]["winner"]
            if len(tuned) == len(methods):
                _write_tuning(out_dir, methods, seeds, grid, sel_seeds, threshold, rule, tuned)
        p, k = winners[m], methods.index(m)  # report runs in seed-major order over all methods
        yield [Run("report", m, p, s, config(m, p, s), run_dir(out_dir, m, s, p), order=(1, 0, i * len(methods) + k),
                   tag=_tag("report", i * len(methods) + k, len(seeds) * len(methods), m, p, s))
               for i, s in enumerate(seeds)]

    with launcher:
        expected = {m: sum(r.method == m for r in selection) + len(seeds) for m in methods}  # before extensions
        pending = drive({m: pipeline(m) for m in methods}, launcher, resume=resume, out_dir=out_dir, log=log,
                        expected=expected, report_runs={m: len(seeds) for m in methods})
    if pending or not report:
        return {}
    summary = write_report(out_dir, report_epochs=report_epochs, focus=rule.focus)
    for x in summary["excluded"]:
        log(f"warning: {x['run']} left out of the report: {x['why']}")
    log("")
    log(summary_table(summary))
    log("")
    log(f"report: {out_dir / 'report.md'} (figures {out_dir}/*.png, numbers {out_dir / 'summary.json'})")
    return summary


# ----------------------------------------------------------------------------------------------------
# selection on the grid, extended beyond its edges (the rule itself: selection.py)


def _tune_method(out_dir: Path, m: str, k: int, grid: dict, sel_seeds: list[int], candidates: dict[str, dict],
                 config, threshold: float, rule: _Rule, log: Callable[[str], None]) -> Iterator[list[Run]]:
    """Method ``m``'s selection (its selection runs are done): pick its grid point on the selection seeds; up to
    ``rule.extend_edges`` times, while the winner sits at an edge, grow ``m``'s grid one step beyond it
    (selection.extend_axis), yield the new points' runs on the selection seeds and reselect. ``k``: the
    method's place in the comparison (run order). Returns ``{"winner", "rows", "edges", "grid",
    "extensions", "refused"}`` (``candidates`` grows with the grid)."""
    grid_m = {key: list(v) for key, v in grid.items()}
    extensions: list[dict] = []
    refused: dict[tuple, dict] = {}
    for rnd in range(rule.extend_edges + 1):
        by_point = {name: {s: _selection_log(run_dir(out_dir, m, s, p)) for s in sel_seeds}
                    for name, p in candidates.items()}
        winner, rows = select_point(by_point, threshold, rule.metric)
        edges = winner_edges(grid_m, candidates[winner])
        if rnd == rule.extend_edges:
            break
        for key, side in edges.items():
            if side is None:
                continue
            value, how = extend_axis(grid_m[key], side)
            wider, why = {}, how
            if value is not None:
                wider = {**grid_m, key: [value, *grid_m[key]] if side == "low" else [*grid_m[key], value]}
                wider, why = _typed_extension(m, key, wider, candidates, config, sel_seeds)
            if why is not None:
                refused.setdefault((key, side), {"method": m, "key": key, "side": side, "value": value, "why": why,
                                                 "_round": rnd + 1})
                log(f"not extending {m}'s {key} beyond its {side} edge: {why}")
                continue
            value = wider[key][0 if side == "low" else -1]  # as the grid types it
            grid_m = wider
            extensions.append({"round": rnd + 1, "method": m, "key": key, "side": side, "value": value, "step": how})
            log(f"extending {m}'s {key} beyond its {side} edge: {value} ({how})")
        new = [p for p in _grid_points(grid_m) if point_name(p) not in candidates]
        candidates.update({point_name(p): p for p in new})
        if not new:
            break
        pairs = [(s, p) for s in sel_seeds for p in new]
        yield [Run("selection", m, p, s, config(m, p, s), run_dir(out_dir, m, s, p), order=(0, rnd + 1, i, k),
                   tag=_tag(f"selection round {rnd + 2},", i, len(pairs), m, p, s)) for i, (s, p) in enumerate(pairs)]
    row = next(r for r in rows if r["rank"] == 1)
    value = "never" if row["value"] is None else f"{row['value']:g}"
    at = ", ".join(f"{key} {e}" for key, e in edges.items() if e)
    log(f"selected for {m}: {winner} (median {selection_metric_label(rule.metric, threshold)}: {value})"
        f"{f' at the grid edge ({at})' if at else ''}")
    # a refusal is news only while the winner still sits at that edge (a later round may have moved it inside)
    return {"winner": candidates[winner], "rows": rows, "edges": edges, "grid": grid_m, "extensions": extensions,
            "refused": [r for (key, side), r in refused.items() if edges.get(key) == side]}


def _write_tuning(out_dir: Path, methods: list[str], seeds: list[int], grid: dict, sel_seeds: list[int],
                  threshold: float, rule: _Rule, tuned: dict[str, dict]) -> None:
    """``selection.json`` once every method has its winner (``_tune_method``), in the comparison's method
    order whatever order the methods finished in."""
    rank = {m: i for i, m in enumerate(methods)}
    extensions = sorted((e for m in methods for e in tuned[m]["extensions"]),
                        key=lambda e: (e["round"], rank[e["method"]]))
    refused = sorted((r for m in methods for r in tuned[m]["refused"]), key=lambda r: (r["_round"], rank[r["method"]]))
    atomic_write_text(out_dir / SELECTION, json_text({
        "primary": {"key": "train_acc", "op": ">=", "value": threshold}, "selection_metric": rule.metric,
        "grid": grid, "grids": {m: tuned[m]["grid"] for m in methods}, "extend_edges": rule.extend_edges,
        "selection_seeds": sel_seeds, "report_seeds": seeds,
        "selected": {m: tuned[m]["winner"] for m in methods},
        "folders": {m: point_name(tuned[m]["winner"]) for m in methods},
        "edge": {m: tuned[m]["edges"] for m in methods}, "extensions": extensions,
        "not_extended": [{k: v for k, v in r.items() if k != "_round"} for r in refused],
        "tuning": {m: tuned[m]["rows"] for m in methods}}, indent=2) + "\n")


def _typed_extension(method: str, key: str, wider: dict, candidates: dict, config,
                     sel_seeds: list[int]) -> tuple[dict, str | None]:
    """``method``'s grid grown to ``wider``, its values typed as ``parse_grid`` types them, and None; or the
    reason no folder or run config can take the new value."""
    try:
        typed = {**wider, key: parse_grid({key: wider[key]})[key]}
        check_all_buildable(config(method, p, sel_seeds[0]) for p in _grid_points(typed)
                            if point_name(p) not in candidates)
    except ValueError as e:
        return wider, f"not a valid setting ({e})"
    return typed, None


def _check_metric_epoch(metric: str, configs: list[TrainConfig]) -> None:
    """``train_acc@E`` needs epoch ``E`` evaluated in every selection run."""
    epoch = metric_epoch(metric)
    for cfg in configs:
        if epoch > cfg.epochs or (epoch % cfg.eval_every and epoch != cfg.epochs):
            raise ConfigError("selection_metric", f"selection_metric {metric}: epoch {epoch} is not evaluated by "
                                                  f"runs of {cfg.epochs} epochs evaluated every {cfg.eval_every}; "
                                                  "pick an evaluated epoch")


_LENGTH_KEYS = ("epochs", "eval_every")  # a grid over them compares runs of different lengths


def _check_run_lengths(grid: dict, metric: str) -> None:
    """ConfigError for a grid over ``epochs`` or ``eval_every`` unless the metric is ``train_acc@E``: runs of other
    lengths follow other schedules and are evaluated at other epochs, so their sustained or first epochs and
    mean errors do not compare; the accuracy at one epoch that every run evaluates does."""
    varied = [k for k in _LENGTH_KEYS if len(grid.get(k, ())) > 1]
    if varied and metric_epoch(metric) is None:
        raise ConfigError("grid", f"a grid over {varied[0]} compares runs of different lengths, which the selection "
                                  f"metric {metric} cannot rank fairly (a shorter run has fewer epochs to fall back, "
                                  "and its schedule and evaluations differ); use --selection-metric train_acc@E with "
                                  f"E evaluated by every run, or one compare per {varied[0]}")


def _parse_rounds(n) -> int:
    """``extend_edges``: a whole number >= 0 (read by the rule of the config's integers)."""
    rule = Rule(lo=0, words="a whole number >= 0 (how many times a grid may grow beyond an edge)")
    try:
        return read_integer("extend_edges", n, rule)
    except ConfigError as e:
        if str(e).startswith("bad value"):
            raise ConfigError("extend_edges", f"extend_edges must be {rule.words}; got {n!r}") from None
        raise


def _parse_focus(focus, methods: list[str]) -> str:
    """The verdict's method: a compared method, ``"none"`` (also None) or ``"auto"``, resolved to one of the
    first two."""
    if focus is not None and not isinstance(focus, str):
        raise ValueError(f"focus must be a method name or none; got {focus!r}")
    return resolve_focus(focus, methods) or "none"


# ----------------------------------------------------------------------------------------------------
# helpers


def _check_grid_keys_used(planned: dict[tuple[str, str], TrainConfig], grid: dict) -> None:
    """ConfigError for a grid key that a method ignores: its points would be identical runs, and the selection
    would crown one of them by a tie."""
    for (method, _), cfg in planned.items():
        unused = sorted(ignored_fields(cfg) & set(grid))
        if unused:
            raise ConfigError("grid", f"grid key {unused[0]!r} does not change method {method!r} "
                                      f"({ignored_reason(cfg, unused[0])}): its grid points would be identical runs; "
                                      f"drop {unused[0]} from the grid or {method} from the methods")


def _check_report_epochs_reached(planned: dict[tuple[str, str], TrainConfig], report_epochs: list[int] | None) -> None:
    """ConfigError for an epoch of the report's table that a run of the comparison never reaches."""
    if not report_epochs:
        return
    (method, point), cfg = min(planned.items(), key=lambda item: item[1].epochs)
    if report_epochs[-1] > cfg.epochs:
        where = f"method {method!r}{f' at {point}' if point else ''}"
        raise ConfigError("report_epochs", f"report_epochs {report_epochs[-1]} is past the end of the runs of {where} "
                                           f"({cfg.epochs} epochs); choose epochs in 0..{cfg.epochs}")


def _ignored_settings(given: set[str], variants: dict, planned: dict[tuple[str, str], TrainConfig]) -> list[str]:
    """Warnings: a base key no run of the comparison uses, a variant's key its method ignores."""
    notes = []
    configs = list(planned.values())
    unused = set.intersection(*(ignored_fields(c) for c in configs)) & given if configs else set()
    for key in sorted(unused):
        notes.append(f"{ignored_reason(configs[0], key)}: the value you set is ignored by every run of this "
                     "comparison")
    for (method, _), cfg in planned.items():
        spec = variants.get(method, {})
        for key in sorted(ignored_fields(cfg) & non_default(spec) - unused):
            note = f"variant {method!r}: {ignored_reason(cfg, key)}: the value it sets is ignored"
            if note not in notes:
                notes.append(note)
    return notes


def _unused_options(variants: dict, methods: list[str], grid: dict, **grid_options: tuple) -> list[str]:
    """Warnings: a variant that no listed method names (it never runs); a selection option (value, default) set to
    another value than its default for a comparison without a grid (it has nothing to select)."""
    notes = [f"variant {name!r} is not in methods ({', '.join(methods)}), so it does not run; list it in --methods "
             "(or methods:) to compare it" for name in variants if name not in methods]
    if not grid:
        notes += [f"{key} applies to a tuned comparison only (--grid, or grid:); without a grid it is ignored"
                  for key, (value, default) in grid_options.items() if value != default]
    return notes


def _typed(cfg: TrainConfig, spec: dict) -> dict:
    """A variant's settings as its config typed them (``"0.05"`` → ``0.05``)."""
    d = cfg.to_dict()
    return {k: d[k] for k in spec}


def _keyed(key: str, parse, *args):
    """``parse(*args)``, its ValueError raised as a ConfigError naming ``key``."""
    try:
        return parse(*args)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def _tag(phase: str, index: int, total: int, method: str, point: dict, seed: int) -> str:
    """``[selection 3/12] standard lr=0.1 seed 1000``: a run in log lines."""
    where = f" {point_name(point)}" if point else ""
    return f"[{phase} {index + 1}/{total}] {method}{where} seed {seed}"


def _selection_log(path: Path) -> list[dict]:
    """A selection run's records; a diverged run's as one record that reaches nothing (its loss is inf)."""
    if (path / DIVERGED).is_file():
        return [{"epoch": math.inf, "train_loss": math.inf, "train_acc": math.nan}]
    return read_jsonl(path / METRICS)


def _grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest (``[{}]`` without a grid)."""
    points: list[dict] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def _run_folders(out_dir: Path) -> list[Path]:
    """Every ``runs/<method>/seed-<s>`` and ``runs/<method>/<point>/seed-<s>`` folder that holds results: a
    checkpoint, or a log with records after epoch 0 (``runlog.log_has_results``). A run stopped before its first
    checkpoint (killed while loading data or during the evaluation before training) left nothing to keep or
    to identify, and is trained afresh."""
    found = [*out_dir.glob("runs/*/seed-*"), *out_dir.glob("runs/*/*/seed-*")]
    return sorted(p for p in found if p.is_dir() and ((p / CHECKPOINT).exists() or log_has_results(p / METRICS)))


def _check_existing_runs(out_dir: Path, planned: dict[Path, TrainConfig], base: dict, grid: dict, variants: dict,
                         resume: bool) -> None:
    """Every run folder already in ``out_dir/runs`` must be, by its checkpoint, the run its place says: a
    planned folder exactly its config; any other folder ``runs/<method>[/<point>]/seed-<s>`` the base config
    with that method's (or variant's) settings, that point's values and that seed (values of grid keys the
    folder does not name may differ). The report pools them, so anything else is a ``ValueError``."""
    from .build import data_fingerprint

    prints: dict[str, str | None] = {}
    advice = f"use a new --out directory, or delete {out_dir / 'runs'} to start over"
    for folder in _run_folders(out_dir):
        cfg = planned.get(folder)
        if cfg is not None and not resume:
            continue  # retrained from scratch
        if not (folder / CHECKPOINT).is_file():
            raise ValueError(f"{folder} holds results (records after epoch 0 in {METRICS}) but no {CHECKPOINT}, so "
                             "what run it is cannot be established; delete that folder (or pass --no-resume to "
                             f"retrain it), or {advice}")
        ckpt = load_checkpoint(folder / CHECKPOINT)
        saved = with_defaults(ckpt["config"])
        wanted = cfg.to_dict() if cfg is not None else _expected_config(out_dir, folder, saved, base, grid,
                                                                         variants, advice)
        diff = [f"{k}: {a!r} vs {b!r}" for k, (a, b) in config_diff(saved, wanted).items()]
        if diff:
            raise ValueError(f"{out_dir} holds runs made with a different config ({'; '.join(diff[:3])}; e.g. "
                             f"{folder}); {advice}")
        saved_print = ckpt.get("data_fingerprint")
        if saved_print is not None:
            dataset = saved.get("dataset")
            if dataset not in prints:
                prints[dataset] = data_fingerprint(TrainConfig.from_dict(saved))
            if prints[dataset] is not None and prints[dataset] != saved_print:
                raise ValueError(f"the data file of {dataset} has changed since {folder} was trained (content "
                                 f"fingerprint differs); {advice}")


def _expected_config(out_dir: Path, folder: Path, saved: dict, base: dict, grid: dict, variants: dict,
                     advice: str) -> dict:
    """The config a run folder this comparison did not plan must hold, from its place in ``runs/``."""
    parts = folder.relative_to(out_dir / "runs").parts
    method, seed_dir = parts[0], parts[-1]
    where = f"{folder} holds a run of method {saved.get('method')!r}, seed {saved.get('seed')!r}"
    if method not in METHODS and method not in variants:
        raise ValueError(f"{out_dir / 'runs' / method} holds runs of a method this comparison does not define "
                         f"({method!r}: list it in --methods, with its --variant if it is one), or {advice}")
    if seed_dir != f"seed-{saved.get('seed')}":
        raise ValueError(f"{where} in folder {seed_dir}; a run's folder must name its seed: {advice}")
    point: dict = {}
    if len(parts) == 3:
        keys = [k for k, _, _ in (p.partition("=") for p in parts[1].split(","))]
        point = {k: saved.get(k) for k in keys}
        if any(k not in field_names() for k in keys) or point_name(point) != parts[1]:
            raise ValueError(f"{where}, whose values do not match its folder {parts[1]!r}; {advice}")
    free = {k: saved.get(k) for k in grid if k not in point}  # e.g. runs made before the grid was added
    spec = variants.get(method, {"method": method})
    try:
        return TrainConfig.from_dict({**base, **spec, **free, **point, "seed": saved.get("seed")}).to_dict()
    except ValueError as e:
        raise ValueError(f"{where} that this comparison's settings cannot describe ({e}); {advice}") from None


def _write_compare_config(out_dir: Path, base: dict, methods: list[str], seeds: list[int], grid: dict,
                          sel_seeds: list[int], variants: dict, report_epochs: list[int] | None,
                          threshold: float, rule: _Rule) -> None:
    import yaml

    resolved: dict = {"methods": methods, "seeds": seeds, "train_acc_threshold": threshold,
                      "selection_metric": rule.metric, "focus": rule.focus}
    if grid:
        resolved.update(grid=grid, selection_seeds=sel_seeds, extend_edges=rule.extend_edges)
    if variants:
        resolved["variants"] = {k: v for k, v in variants.items() if k in methods}
    if report_epochs is not None:
        resolved["report_epochs"] = report_epochs
    resolved.update({k: v for k, v in with_defaults(base).items() if k not in ("method", "seed")})
    text = "# resolved by `ncguide compare`; rerun with: ncguide compare --config config.yaml --out <dir>\n"
    atomic_write_text(out_dir / "config.yaml", text + yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False))


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "-_.+" for c in name)


def _value_text(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)

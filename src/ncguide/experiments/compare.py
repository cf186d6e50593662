"""Runs of methods × seeds side by side, then the report.

    summary = run_compare({"dataset": "mnist1d", "model": "cnn1d", "epochs": 30},
                          methods=["standard", "fixed-etf", "nearest-etf"], seeds=3, out_dir="out")

Layout of ``out_dir`` (docs/design.md): ``runs/<method>/seed-<s>/`` (``metrics.jsonl``, ``config.json``,
``checkpoint.pt``, all written by :func:`ncguide.experiments.train.train`), ``config.yaml`` (the resolved comparison:
base config, methods, seeds; ``ncguide compare --config out/config.yaml --out out`` repeats it), and the
report (``summary.json``, ``report.md``, ``*.png``). Runs go one after the other in this process.
Re-running on the same ``out_dir`` reuses finished runs and resumes unfinished ones from their checkpoint;
it may add methods or seeds. Runs in ``out_dir`` made with another config (other than method, seed and
runtime fields such as ``device``) are an error: the report pools every run in ``out_dir/runs``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..heads import METHODS
from .build import check_all_buildable
from .checkpoint import RUNTIME_FIELDS, is_finished
from .config import TrainConfig, with_defaults
from .files import atomic_write_text, last_record
from .report import short_record, summary_table, write_report
from .train import METRICS, train

__all__ = ["DEFAULT_METHODS", "DEFAULT_SEEDS", "parse_methods", "parse_seeds", "run_dir", "run_compare"]

DEFAULT_METHODS = ("standard", "fixed-etf", "nearest-etf")
DEFAULT_SEEDS = 3


def parse_seeds(seeds: int | str | Iterable[int]) -> list[int]:
    """``3`` or ``"3"`` → ``[0, 1, 2]``; ``"0,4"`` or ``[0, 4]`` → ``[0, 4]``."""
    if isinstance(seeds, str):
        s = seeds.strip()
        try:
            seeds = [int(x) for x in s.split(",")] if "," in s else int(s)
        except ValueError:
            raise ValueError(f"bad seeds {seeds!r}; give a count N (seeds 0..N-1) or a list like 0,1,2") from None
    if isinstance(seeds, bool):
        raise ValueError(f"bad seeds {seeds!r}; give a count N (seeds 0..N-1) or a list like 0,1,2")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a count >= 1 (got {seeds}); e.g. seeds: 3 runs seeds 0, 1, 2")
        return list(range(seeds))
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ValueError(f"bad seeds {seeds!r}; give a count N (seeds 0..N-1) or a list like 0,1,2") from None
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be a non-empty list without repeats (got {out})")
    return out


def parse_methods(methods: str | Iterable[str]) -> list[str]:
    """``"standard,nearest-etf"`` or a list → a list of known, distinct method names."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or methods}; valid methods: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"method listed twice in {methods}; list each method once")
    return methods


def run_dir(out_dir: str | Path, method: str, seed: int) -> Path:
    """``out_dir/runs/<method>/seed-<seed>``."""
    return Path(out_dir) / "runs" / method / f"seed-{seed}"


def _config_diff(saved: dict, wanted: dict) -> list[str]:
    keys = sorted((set(saved) | set(wanted)) - RUNTIME_FIELDS - {"method", "seed"})
    return [f"{k}: {saved.get(k)!r} vs {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k)]


def _check_same_experiment(out_dir: Path, wanted: dict, skip: set[Path]) -> None:
    """Every run already in ``out_dir/runs`` (except those in ``skip``, about to be retrained) must share
    ``wanted``'s config up to method, seed and runtime fields: the report pools all of them."""
    wanted = json.loads(json.dumps(wanted))  # round-trip so tuples and lists compare equal
    for path in sorted(out_dir.glob("runs/*/seed-*/config.json")):
        if path.parent in skip:
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # train() rewrites it
        diff = _config_diff(with_defaults(saved), wanted)
        if diff:
            raise ValueError(
                f"{out_dir} holds runs made with a different config ({'; '.join(diff[:3])}; e.g. {path.parent}); "
                f"use a new --out directory, or delete {out_dir / 'runs'} to start over"
            )


def _write_compare_config(out_dir: Path, base: dict, methods: list[str], seeds: list[int]) -> None:
    import yaml

    resolved = {"methods": methods, "seeds": seeds, **{k: v for k, v in base.items() if k not in ("method", "seed")}}
    text = "# resolved by `ncguide compare`; rerun with: ncguide compare --config config.yaml --out <dir>\n"
    atomic_write_text(out_dir / "config.yaml", text + yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False))


def run_compare(
    base: TrainConfig | dict,
    methods: str | Iterable[str] = DEFAULT_METHODS,
    seeds: int | str | Iterable[int] = DEFAULT_SEEDS,
    out_dir: str | Path = "out",
    *,
    resume: bool = True,
    progress: str = "auto",
    log: Callable[[str], None] = print,
    report: bool = True,
) -> dict:
    """Train every method × seed of ``base`` into ``out_dir/runs/<method>/seed-<s>/``, then write the report.

    ``base``: a TrainConfig or a dict of its fields (``method`` and ``seed`` are replaced per run).
    ``seeds``: a count N (seeds 0..N-1) or a list. Finished runs are reused (not retrained) and unfinished
    ones resumed when ``resume``; ``resume=False`` retrains everything from scratch. ``log`` gets one line
    per run. Returns the report summary (:func:`ncguide.experiments.report.summarize`), or ``{}`` when ``report=False``.
    """
    base_dict = base.to_dict() if isinstance(base, TrainConfig) else dict(base)
    methods, seeds = parse_methods(methods), parse_seeds(seeds)
    # validate every run's config before training any of them
    # seed-major order: an interrupted comparison has every method at the first seeds
    configs = {(m, s): TrainConfig.from_dict({**base_dict, "method": m, "seed": s}) for s in seeds for m in methods}
    check_all_buildable(configs.values())  # what a later run's build would reject (K > d, model vs data, ...)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = configs[methods[0], seeds[0]].to_dict()
    _check_same_experiment(out_dir, first, skip=set() if resume else {run_dir(out_dir, m, s) for m, s in configs})
    _write_compare_config(out_dir, first, methods, seeds)

    n = len(configs)
    for i, ((m, s), cfg) in enumerate(configs.items(), 1):
        path = run_dir(out_dir, m, s)
        tag = f"[{i}/{n}] {m} seed {s}"
        if resume and is_finished(path):
            log(f"{tag}: reused finished run in {path} ({short_record(last_record(path / METRICS))})")
            continue
        resuming = resume and (path / "checkpoint.pt").is_file()
        log(f"{tag}: {'resuming' if resuming else 'training'} in {path}")
        t0 = time.perf_counter()
        record = train(cfg, path, resume=resume, progress=progress)
        log(f"{tag}: done in {time.perf_counter() - t0:.1f} s ({short_record(record or {})})")

    if not report:
        return {}
    summary = write_report(out_dir)
    log("")
    log(summary_table(summary))
    log("")
    log(f"report: {out_dir / 'report.md'} (figures {out_dir}/*.png, numbers {out_dir / 'summary.json'})")
    return summary

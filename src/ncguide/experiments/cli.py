"""The ``ncguide`` command (also ``python -m ncguide``): train one run, compare methods × seeds, report.

    ncguide train   --method nearest-etf --dataset mnist1d --model cnn1d --epochs 30 --out out/one
    ncguide compare --config configs/demo.yaml --out demo-out
    ncguide report  demo-out

A run's settings come, in increasing precedence, from the TrainConfig defaults, a YAML ``--config`` file,
the explicit flags (``--dataset``, ``--epochs``, ...) and ``--set key=value`` (any TrainConfig field).
Mistakes a user makes print one line ``ncguide: error: ...`` and exit with status 2 (set the environment
variable ``NCGUIDE_TRACEBACK=1`` to see the traceback instead); a diverged run (non-finite loss) exits
with 1, Ctrl-C with 130 (re-running the same command resumes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "resolve_config"]

# flag dest -> TrainConfig field
_COMMON_FLAGS = {"dataset": "dataset", "model": "model", "epochs": "epochs", "batch_size": "batch_size",
                 "lr": "lr", "device": "device", "data_dir": "data_dir"}
# YAML/--set keys read by `compare`, not TrainConfig fields
_COMPARE_KEYS = ("methods", "seeds", "grid", "selection_seeds", "variants", "report_epochs")

_DESCRIPTION = """\
Guiding neural collapse: train classifiers whose head is the simplex ETF nearest to the
class means (nearest-etf), next to a learned head (standard) and a fixed simplex ETF
(fixed-etf), and measure neural collapse (NC1-NC4) as they train."""

_EPILOG = """\
examples:
  ncguide compare --config configs/demo.yaml --out demo-out   # 3 methods x 3 seeds on CPU
  ncguide report demo-out                                      # redraw figures and table
  ncguide train --method nearest-etf --dataset digits --model mlp --epochs 20 --out out/digits

Configs for the paper's experiments and CPU-sized ones are in configs/.
Run `ncguide <command> --help` for the options of each command."""

_EPILOG_CONFIG = """\
configuration (lowest to highest precedence):
  TrainConfig defaults < --config FILE.yaml < explicit flags < --set key=value
  Any TrainConfig field can be set with --set, e.g. --set optimizer=adam --set temperature=10;
  one entry of a dict field with a dot: --set model_kwargs.width=0.5. Unknown keys are rejected
  with the list of valid ones; --print-config shows every field and its resolved value.
valid names:
"""

_TRAIN_DESCRIPTION = """\
Train one model with one classifier head (method). Writes, in --out:
  metrics.jsonl   one JSON line per evaluation (accuracy, loss, NC metrics, wall_s)
  config.json     the resolved config
  checkpoint.pt   the state to resume from (re-running the same command resumes)"""

_COMPARE_DESCRIPTION = """\
Train every method for every seed, one run after another, into OUT/runs/<method>/seed-<s>/,
then write OUT/summary.json, OUT/report.md and the figures OUT/*.png; OUT/config.yaml holds
the resolved comparison. Re-running on the same OUT reuses finished runs and resumes
interrupted ones. Besides TrainConfig fields, a config file may list `methods:` (a list)
and `seeds:` (a count N for seeds 0..N-1, or a list); --methods/--seeds override them.

Tuned comparison (best against best): with --grid KEY=V1,V2,... (YAML `grid: {KEY: [V1, V2]}`)
every method first runs every grid point on the selection seeds (--selection-seeds N, YAML
`selection_seeds:`; default 2 seeds, 1000 and 1001, never report seeds) into
OUT/runs/<method>/<KEY=V>/seed-<s>/; per method the point with the fewest median epochs to
99% training accuracy wins (ties: lower final training loss), and the report seeds
then run at each method's winner. OUT/selection.json and the report show the tuning table.
A YAML `variants:` mapping names methods with their own settings, e.g.
  variants: {nearest-etf-freeze: {method: nearest-etf, freeze_after: 5}}
and `report_epochs: [50, 200]` picks the epochs of the training-accuracy table."""

_REPORT_DESCRIPTION = """\
Read DIR/runs/<method>/seed-<s>/metrics.jsonl and (re)write DIR/summary.json, DIR/report.md
and the figures DIR/*.png (overview.png, train_acc.png, test_acc.png, loss.png, nc1.png,
nc2.png, nc3.png, nc4.png): median over seeds with a min-max band, per method."""


def _names(names) -> str:
    """``a, b or c`` for a registry's names."""
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    from .config import DEVICES
    from .data import DATASETS
    from .models import MODELS

    g = p.add_argument_group("run settings (override the config file)")
    g.add_argument("--config", metavar="FILE", help="YAML file of TrainConfig fields (see configs/)")
    g.add_argument("--dataset", metavar="NAME", help=_names([*(n for n in DATASETS if n != "npz"), "npz:PATH"]))
    g.add_argument("--model", metavar="NAME", help=_names(MODELS))
    g.add_argument("--epochs", type=int, metavar="N", help="training epochs")
    g.add_argument("--batch-size", type=int, metavar="B", help="batch size")
    g.add_argument("--lr", type=float, metavar="LR", help="learning rate")
    g.add_argument("--device", choices=DEVICES, help="where to train (default: auto)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="folder of external data sets (default $NCGUIDE_CACHE or ~/.cache/ncguide)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field; repeatable; wins over the flags above")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue unfinished runs from their checkpoint and reuse finished ones (default); "
                        "--no-resume starts again from scratch")
    g.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _config_epilog() -> str:
    """The configuration epilog, with the valid names of the choice fields read from their registries."""
    from ..heads import METHODS
    from ..means import SCHEDULES as MEAN_SCHEDULES
    from ..solve import SOLVERS
    from .optim import OPTIMIZERS, SCHEDULES

    choices = {"method": METHODS, "solver": SOLVERS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
               "mean_schedule": MEAN_SCHEDULES}
    return _EPILOG_CONFIG + "".join(f"  {k}: {', '.join(v)}\n" for k, v in choices.items())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ncguide`` (subcommands train, compare, report)."""
    from ..heads import METHODS

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="ncguide", formatter_class=fmt, description=_DESCRIPTION, epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    t = sub.add_parser(
        "train", formatter_class=fmt, help="train one method with one seed", description=_TRAIN_DESCRIPTION,
        epilog=_config_epilog() + "\nexample:\n  ncguide train --method nearest-etf --dataset mnist1d --model cnn1d "
                                "--epochs 30 --seed 0 --out out/one",
    )
    t.add_argument("--method", metavar="M", help=_names(METHODS))
    t.add_argument("--seed", type=int, metavar="S", help="random seed")
    t.add_argument("--out", metavar="DIR", help="output directory of the run (required)")
    _add_run_flags(t)

    c = sub.add_parser(
        "compare", formatter_class=fmt, help="train every method x seed, then write the report",
        description=_COMPARE_DESCRIPTION,
        epilog=_config_epilog() + "\nexamples:\n  ncguide compare --config configs/demo.yaml --out demo-out\n"
                                "  ncguide compare --dataset digits --model mlp --epochs 10 "
                                "--methods standard,nearest-etf --seeds 2 --out out/digits",
    )
    c.add_argument("--methods", metavar="A,B,C",
                   help="comma-separated methods (default: standard,fixed-etf,nearest-etf)")
    c.add_argument("--seeds", metavar="N", help="number of seeds, runs seeds 0..N-1 (default 3), or a list 0,1,4")
    c.add_argument("--grid", action="append", metavar="KEY=V1,V2", default=None,
                   help="tune every method over these values of KEY on the selection seeds first; repeatable")
    c.add_argument("--selection-seeds", dest="selection_seeds", metavar="N",
                   help="seeds per grid point for the selection (default 2: seeds 1000, 1001), or a list")
    c.add_argument("--report-epochs", dest="report_epochs", metavar="E1,E2",
                   help="epochs of the training-accuracy table (default: the last epoch and its midpoint)")
    c.add_argument("--variant", dest="variants", action="append", default=None, metavar="NAME:KEY=V,...",
                   help="a named method with its own settings, e.g. nearest-etf-freeze:method=nearest-etf,"
                        "freeze_after=3; list NAME in --methods; repeatable")
    c.add_argument("--out", metavar="DIR", help="output directory of the comparison (required)")
    _add_run_flags(c)

    r = sub.add_parser("report", formatter_class=fmt, help="(re)write figures and tables from a compare's logs",
                       description=_REPORT_DESCRIPTION)
    r.add_argument("dir", metavar="DIR", help="the --out directory of `ncguide compare`")
    r.add_argument("--train-acc-threshold", type=float, default=None, metavar="A",
                   help="training accuracy to reach, as a fraction (default 0.99)")
    r.add_argument("--nc1-threshold", type=float, default=None, metavar="X",
                   help="NC1 value to reach (default: nc1_threshold of the runs' config)")
    r.add_argument("--report-epochs", dest="report_epochs", metavar="E1,E2",
                   help="epochs of the training-accuracy table (default: the compare's, else the last and its "
                        "midpoint)")
    return parser


# ----------------------------------------------------------------------------------------------------
# config resolution


def _load_yaml(path: str) -> dict:
    import yaml

    from .config import load_config

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path!r} not found; pass an existing YAML file (see configs/)")
    try:
        return dict(load_config(p) or {})
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"malformed YAML in {path}{where}: {problem}; fix the syntax of that line") from None


def resolve_config(args: argparse.Namespace, extra_flags: dict | None = None) -> tuple[dict, dict]:
    """(TrainConfig fields, compare settings) from defaults < ``--config`` < explicit flags < ``--set``.

    Compare settings are the keys ``methods`` and ``seeds`` (YAML top level, ``--methods``/``--seeds``,
    ``--set methods=a,b``); they are not TrainConfig fields."""
    from .config import apply_overrides

    d = _load_yaml(args.config) if args.config else {}
    compare = {k: d.pop(k) for k in _COMPARE_KEYS if k in d}
    flags = {field: getattr(args, dest) for dest, field in _COMMON_FLAGS.items()}
    flags.update(extra_flags or {})
    d.update({k: v for k, v in flags.items() if v is not None})
    compare.update({k: getattr(args, k) for k in _COMPARE_KEYS
                    if k not in ("grid", "variants") and getattr(args, k, None) is not None})
    if getattr(args, "grid", None) is not None:  # --grid items replace the file's grid as a whole
        compare["grid"] = args.grid
    if getattr(args, "variants", None) is not None:  # --variant items add to (or replace) the file's variants
        compare["variants"] = {**(compare.get("variants") or {}), **_parse_variant_flags(args.variants)}
    train_sets = []
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad --set {item!r}; write it as key=value, e.g. --set epochs=10")
        if key.strip() in _COMPARE_KEYS:
            compare[key.strip()] = value.strip()
        else:
            train_sets.append(item)
    return (apply_overrides(d, train_sets) if train_sets else d), compare


def _parse_variant_flags(items: list[str]) -> dict[str, dict]:
    """``["name:method=m,key=v"]`` → ``{"name": {"method": "m", "key": "v"}}`` (values typed later)."""
    out = {}
    for item in items:
        name, colon, rest = item.partition(":")
        pairs = [p.partition("=") for p in rest.split(",") if p.strip()]
        if not colon or not name.strip() or not pairs or any(not eq or not k.strip() for k, eq, _ in pairs):
            raise ValueError(f"bad --variant {item!r}; write NAME:method=M,KEY=V,..., e.g. "
                             "--variant nearest-etf-freeze:method=nearest-etf,freeze_after=3")
        out[name.strip()] = {k.strip(): v.strip() for k, _, v in pairs}
    return out


def _check_out(out: str | None) -> Path:
    if out is None:
        raise ValueError("the output directory is missing; add --out DIR")
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"--out {out!r} is a file, not a directory; choose another --out") from None
    except OSError as e:
        raise ValueError(f"cannot create --out directory {out!r} ({e.strerror}); choose a writable path") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out directory {out!r} is not writable; choose a writable path")
    return path


# ----------------------------------------------------------------------------------------------------
# commands


def _cmd_train(args) -> int:
    from .config import TrainConfig
    from .report import short_record
    from .train import train

    d, _ = resolve_config(args, {"method": args.method, "seed": args.seed})  # methods/seeds of a compare
    cfg = TrainConfig.from_dict(d)
    if args.print_config:
        return _print_config(cfg.to_dict())
    out = _check_out(args.out)
    print(f"ncguide: training {cfg.method} on {cfg.dataset} ({cfg.model}), seed {cfg.seed} -> {out}", flush=True)
    record = train(cfg, out, resume=args.resume)
    print(f"done: {short_record(record or {})}")
    print(f"logs: {out / 'metrics.jsonl'}  config: {out / 'config.json'}  checkpoint: {out / 'checkpoint.pt'}")
    return 0


def _print_config(d: dict) -> int:
    import yaml

    print(yaml.safe_dump(d, sort_keys=False), end="")
    return 0


def _cmd_compare(args) -> int:
    from .compare import (
        DEFAULT_METHODS,
        DEFAULT_SEEDS,
        DEFAULT_SELECTION_SEEDS,
        parse_grid,
        parse_methods,
        parse_seeds,
        parse_variants,
        run_compare,
    )
    from .config import TrainConfig

    d, compare = resolve_config(args)
    for k in ("method", "seed"):  # set per run
        d.pop(k, None)
    variants = parse_variants(compare.get("variants"))
    methods = parse_methods(compare.get("methods", DEFAULT_METHODS), variants)
    seeds = parse_seeds(compare.get("seeds", DEFAULT_SEEDS))
    grid = parse_grid(compare.get("grid"))
    options = dict(grid=grid, selection_seeds=compare.get("selection_seeds", DEFAULT_SELECTION_SEEDS),
                   variants=variants, report_epochs=compare.get("report_epochs"))
    if args.print_config:
        cfg = TrainConfig.from_dict({**d, "method": "standard"}).to_dict()
        extra = {"grid": grid, "selection_seeds": options["selection_seeds"]} if grid else {}
        extra.update({"variants": variants} if variants else {})
        return _print_config({"methods": methods, "seeds": seeds, **extra,
                              **{k: v for k, v in cfg.items() if k not in ("method", "seed")}})
    run_compare(d, methods, seeds, _check_out(args.out), resume=args.resume, **options)
    return 0


def _cmd_report(args) -> int:
    from .report import default_thresholds, run_configs, summary_table, write_report

    out = Path(args.dir)
    if not out.is_dir():
        raise ValueError(f"{args.dir!r} is not a directory; give the --out directory of `ncguide compare`")
    thresholds = default_thresholds(run_configs(out))
    if args.train_acc_threshold is not None:
        thresholds["train_acc"] = (">=", args.train_acc_threshold)
    if args.nc1_threshold is not None:
        thresholds["nc1"] = ("<=", args.nc1_threshold)
    from .report import check_report_epochs

    summary = write_report(out, thresholds, check_report_epochs(args.report_epochs))
    for x in summary["excluded"]:
        print(f"ncguide: warning: {x['run']} left out of the report: {x['why']}", file=sys.stderr)
    print(summary_table(summary))
    print(f"\nreport: {out / 'report.md'} (figures {out}/*.png, numbers {out / 'summary.json'})")
    return 0


_COMMANDS = {"train": _cmd_train, "compare": _cmd_compare, "report": _cmd_report}


def _error(msg: str) -> int:
    print(f"ncguide: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ncguide``; returns the exit status (0 ok, 2 usage/config error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and argparse usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = open(os.devnull, "w")  # silences the flush at exit
        return 1
    except KeyboardInterrupt:
        print("\nncguide: interrupted; run the same command again to resume (finished runs are kept)",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as e:
        if os.environ.get("NCGUIDE_TRACEBACK"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.filename is not None:
            msg = f"{e.strerror or e}: {e.filename}; check the path and its permissions"
        msg = msg.replace("pass resume=False", "pass --no-resume")  # the library's advice, in CLI words
        notes = getattr(e, "__notes__", None)  # e.g. where in training it happened
        return _error(f"{msg} ({'; '.join(notes)})" if notes else msg)
    except ImportError as e:
        return _error(f"{e}; install the missing package (pip install 'ncguide[experiments]' has them all)")
    except RuntimeError as e:
        from .train import NonFiniteLossError

        if isinstance(e, NonFiniteLossError) and not os.environ.get("NCGUIDE_TRACEBACK"):
            print(f"ncguide: training diverged: {e}", file=sys.stderr)
            return 1
        raise

"""The ``ncguide`` command (also ``python -m ncguide``): train one run, compare methods × seeds, report.

    ncguide train   --method nearest-etf --dataset mnist1d --model cnn1d --epochs 30 --out out/one
    ncguide compare --config demo --out demo-out
    ncguide report  demo-out

A run's settings come, in increasing precedence, from the TrainConfig defaults, a YAML ``--config`` file,
the explicit flags (``--dataset``, ``--epochs``, ...) and ``--set key=value`` (any TrainConfig field).
Every input is checked before anything is trained or written (``build.check_buildable`` for every run of a
compare): a mistake prints one line ``ncguide: error: ...`` naming the key or flag (and the config file it
came from) and exits with status 2, leaving no output folder behind (set the environment variable
``NCGUIDE_TRACEBACK=1`` to see the traceback instead). A diverged run (non-finite loss) exits with 1, and so
does a run whose files cannot be written (disk full, quota, read-only file system: one line naming the
file; re-running the same command resumes from the last checkpoint), and so does a compare whose runs in
child processes or Slurm jobs failed (one line naming each failed run and its log; ``launch.RunsFailedError``);
Ctrl-C exits with 130, and so does SIGTERM for ``train`` and ``compare`` (a scheduler's kill: the run saves a
checkpoint at its current step first, as for Ctrl-C). Warnings are one line ``ncguide: warning: ...``.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["main", "build_parser", "resolve_config"]

# flag dest -> TrainConfig field
_COMMON_FLAGS = {"dataset": "dataset", "model": "model", "epochs": "epochs", "batch_size": "batch_size",
                 "lr": "lr", "device": "device", "data_dir": "data_dir", "loggers": "loggers"}
# YAML/--set keys read by `compare`, not TrainConfig fields (the launch keys: where the runs train)
_LAUNCH_KEYS = ("launcher", "jobs", "gpus_per_run", "runs_per_gpu", "threads_per_run", "wait", "slurm_partition",
                "slurm_time", "slurm_account", "slurm_gpus_per_run", "slurm_cpus_per_run", "slurm_mem",
                "slurm_array_parallelism", "slurm_setup", "slurm_extra")
_COMPARE_KEYS = ("methods", "seeds", "grid", "selection_seeds", "variants", "report_epochs", "train_acc_threshold",
                 "selection_metric", "extend_edges", "focus", *_LAUNCH_KEYS)

_DESCRIPTION = """\
Guiding neural collapse: train classifiers whose head is the simplex ETF nearest to the
class means (nearest-etf), next to a learned head (standard) and a fixed simplex ETF
(fixed-etf), and measure neural collapse (NC1-NC4) as they train."""

_EPILOG = """\
examples:
  ncguide compare --config demo --out demo-out   # 3 methods x 3 seeds on CPU
  ncguide report demo-out                                      # redraw figures and table
  ncguide train --method nearest-etf --dataset digits --model mlp --epochs 20 --out out/digits

Configs for the paper's experiments and CPU-sized ones ship with the package: --config NAME
(demo, mnist1d, ufm-k10, ...: the files of ncguide/configs/); a YAML file path works too.
Run `ncguide <command> --help` for the options of each command."""

_EPILOG_CONFIG = """\
configuration (lowest to highest precedence):
  TrainConfig defaults < --config FILE.yaml < explicit flags and --set key=value (not both for one key)
  Any TrainConfig field can be set with --set, e.g. --set optimizer=adam --set temperature=10;
  one entry of a dict field with a dot: --set model_kwargs.width=0.5. Unknown keys are rejected
  with the list of valid ones; --print-config shows every field and its resolved value.
valid names:
"""

_TRAIN_DESCRIPTION = """\
Train one model with one classifier head (method). Writes, in --out:
  metrics.jsonl   one JSON line per evaluation (accuracy, loss, NC metrics, wall_s)
  config.json     the resolved config
  checkpoint.pt   the state to resume from (re-running the same command resumes)
  *.png           the figures of a comparison, for this run (overview.png, nc1.png, ...)
  metrics.csv, TensorBoard event files, a W&B run: with --logger csv / tensorboard / wandb"""

_COMPARE_DESCRIPTION = """\
Train every method for every seed (one run after another, or several at once: see below)
into OUT/runs/<method>/seed-<s>/,
then write OUT/summary.json, OUT/report.md and the figures OUT/*.png; OUT/config.yaml holds
the resolved comparison. Re-running on the same OUT reuses finished runs and resumes
interrupted ones. Besides TrainConfig fields, a config file may list `methods:` (a list)
and `seeds:` (a count N for seeds 0..N-1, or a list); --methods/--seeds override them.

Tuned comparison (best against best): with --grid KEY=V1,V2,... (YAML `grid: {KEY: [V1, V2]}`)
every method first runs every grid point on the selection seeds (--selection-seeds N, YAML
`selection_seeds:`; default 2 seeds, 1000 and 1001, never report seeds) into
OUT/runs/<method>/<KEY=V>/seed-<s>/; per method the best point wins (ties: lower final
training loss), and the report seeds then run at each method's winner. OUT/selection.json
and the report show the tuning table.
--selection-metric (YAML `selection_metric:`) sets how a point wins: sustained (default: the
fewest median epochs from which training accuracy stays at the threshold to the end), first,
auc or train_acc@E. A winner at either end of a numeric grid axis is marked "at the grid's
edge"; --extend-edges N (YAML `extend_edges:`) extends that method's grid a step beyond it and
reselects, up to N times. The report opens with the verdict: --focus METHOD (YAML `focus:`,
default nearest-etf) against the best other method, with a bootstrap 95% interval and a
permutation-test p-value.
A YAML `variants:` mapping names methods with their own settings, e.g.
  variants: {nearest-etf-freeze: {method: nearest-etf, freeze_after: 5}}
and `report_epochs: [50, 200]` picks the epochs of the training-accuracy table.

Many runs at once: --jobs N trains up to N runs at once, each in its own process (CPU: the
cores split between them; CUDA: disjoint GPUs, --gpus-per-run G through torchrun, or
--runs-per-gpu M runs sharing a GPU); each method's report seeds start as soon as its own
winner is known. --launcher slurm submits the runs as Slurm job arrays (needs
`pip install 'ncguide[slurm]'`; --slurm-time is required); --no-wait returns after
submitting, and the same command later collects what finished. A failed run is named with
its log (RUN/launch.log) while the others go on; rerunning retries only unfinished runs.
The same keys in YAML: jobs, gpus_per_run, runs_per_gpu, threads_per_run, launcher, wait,
slurm_partition, slurm_time, ..., slurm_setup (a list), slurm_extra (a mapping)."""

_REPORT_DESCRIPTION = """\
Read DIR/runs/<method>/seed-<s>/metrics.jsonl and (re)write DIR/summary.json, DIR/report.md
and the figures DIR/*.png (overview.png, train_acc.png, test_acc.png, loss.png, nc1.png,
nc2.png, nc3.png, nc4.png): median over seeds with a min-max band, per method."""

_CONVERT_DESCRIPTION = """\
ncguide reads checkpoints with torch.load(weights_only=True): opening a results folder from someone
else never runs code from it. Checkpoints written by ncguide 0.1 pickled numpy's RNG state, so a safe
load refuses them. This command reads each FILE with the safe loader plus numpy's array types (the only
objects a 0.1 checkpoint pickled; a file that needs anything else is refused as crafted and never
unpickled), stores that state as plain data, checks the result loads safely and replaces FILE atomically."""


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` without prefix matching (``--seed`` is not ``--seeds``) whose errors are one line
    ``ncguide: error: ...`` (exit 2), with a "did you mean" for a misspelt flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []

    def parse_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        parsed = super().parse_args(args, namespace)
        self._refuse_repeated_flags()
        return parsed

    def _refuse_repeated_flags(self) -> None:
        """A flag that takes one value given twice (``--epochs 3 --epochs 5``) is a mistake, not "the last wins";
        only the repeatable ones (``--set``, ``--grid``, ``--variant``, ``--logger``) are given more than once."""
        sub = self._subcommands()
        parser = next((sub[a] for a in self._argv if a in sub), self)
        by_flag = {o: a for a in parser._actions for o in a.option_strings
                   if not isinstance(a, (argparse._AppendAction, argparse._HelpAction))}
        seen: dict[int, str] = {}
        for arg in self._argv:
            if arg == "--":
                break
            action = by_flag.get(arg.partition("=")[0]) if arg.startswith("--") else None
            if action is None:
                continue
            if id(action) in seen:
                flags = sorted({seen[id(action)].partition("=")[0], arg.partition("=")[0]})
                self.error(f"{' and '.join(flags)} {'are both given' if len(flags) > 1 else 'is given twice'}; "
                           "give it once")
            seen[id(action)] = arg

    def error(self, message: str):
        hint = ""
        if message.startswith("unrecognized arguments:"):
            hint = self._suggest(message.split(":", 1)[1].split())
        self.exit(2, f"ncguide: error: {message}{hint} (see `{self._command()} --help`)\n")

    def _command(self) -> str:
        sub = self._subcommands()
        return next((f"{self.prog} {a}" for a in self._argv if a in sub), self.prog)

    def _subcommands(self) -> dict[str, argparse.ArgumentParser]:
        return next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})

    def _suggest(self, unknown: list[str]) -> str:
        sub = self._subcommands()
        parser = next((sub[a] for a in self._argv if a in sub), self)
        flags = [o for a in parser._actions for o in a.option_strings]
        for arg in unknown:
            close = difflib.get_close_matches(arg.partition("=")[0], flags, n=1) if arg.startswith("--") else []
            if close:
                return f"; did you mean {close[0]}?"
        return ""


def _names(names) -> str:
    """``a, b or c`` for a registry's names."""
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    from .config import DEVICES
    from .data import DATASETS
    from .loggers import LOGGERS
    from .models import MODELS

    g = p.add_argument_group("run settings (override the config file)")
    g.add_argument("--config", metavar="FILE",
                   help="YAML file of TrainConfig fields, or the name of a shipped config (demo, mnist1d, "
                        "cifar10-resnet18, ...: ncguide/configs/)")
    g.add_argument("--dataset", metavar="NAME", help=_names([*(n for n in DATASETS if n != "npz"), "npz:PATH"]))
    g.add_argument("--model", metavar="NAME",
                   help=_names(MODELS) + " (cnn: cnn1d for (L,) or (C, L) inputs, else cnn2d)")
    g.add_argument("--epochs", metavar="N", help="training epochs (an integer >= 0)")
    g.add_argument("--batch-size", metavar="B", help="batch size (an integer >= 1)")
    g.add_argument("--lr", metavar="LR", help="learning rate (a number > 0)")
    g.add_argument("--device", choices=DEVICES, help="where to train (default: auto)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="folder of external data sets (default $NCGUIDE_CACHE or ~/.cache/ncguide)")
    g.add_argument("--logger", dest="loggers", action="append", choices=LOGGERS, default=None, metavar="NAME",
                   help=f"also log every record to {_names(LOGGERS[1:])} (metrics.jsonl is always written); "
                        "repeatable; replaces the config file's loggers")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field; repeatable; wins over the flags above")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue unfinished runs from their checkpoint and reuse finished ones (default); "
                        "--no-resume starts again from scratch")
    g.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _add_launch_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the runs train (YAML: the same names with underscores)")
    g.add_argument("--jobs", metavar="N", help="train up to N runs at once, each in its own process (default 1: "
                                               "one after another in this process; Slurm: --slurm-array-parallelism)")
    g.add_argument("--gpus-per-run", dest="gpus_per_run", metavar="G",
                   help="GPUs of each run on CUDA (default 1; G > 1 runs it through torchrun; Slurm: "
                        "--slurm-gpus-per-run)")
    g.add_argument("--runs-per-gpu", dest="runs_per_gpu", metavar="M",
                   help="let M small runs share one GPU (default 1)")
    g.add_argument("--threads-per-run", dest="threads_per_run", metavar="T",
                   help="CPU threads of each run (default: the cores split between the runs at once; Slurm: "
                        "--slurm-cpus-per-run)")
    g.add_argument("--launcher", choices=("local", "slurm"), default=None,
                   help="local processes (default) or Slurm job arrays through submitit")
    g.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="Slurm: wait for the jobs and write the report (default); --no-wait submits and returns")
    s = p.add_argument_group("Slurm (with --launcher slurm)")
    s.add_argument("--slurm-partition", dest="slurm_partition", metavar="NAME", help="partition of the jobs")
    s.add_argument("--slurm-time", dest="slurm_time", metavar="TIME",
                   help="time limit of each run's job (required): minutes, H:MM:SS or D-HH:MM:SS; a run that hits it "
                        "is requeued and resumes from its checkpoint")
    s.add_argument("--slurm-account", dest="slurm_account", metavar="NAME", help="account to charge")
    s.add_argument("--slurm-gpus-per-run", dest="slurm_gpus_per_run", metavar="G",
                   help="GPUs of each run's job (G > 1: torchrun in the job)")
    s.add_argument("--slurm-cpus-per-run", dest="slurm_cpus_per_run", metavar="C",
                   help="CPUs of each run's job (its thread count)")
    s.add_argument("--slurm-mem", dest="slurm_mem", metavar="SIZE", help="memory of each run's job, e.g. 32G")
    s.add_argument("--slurm-array-parallelism", dest="slurm_array_parallelism", metavar="N",
                   help="at most N jobs of an array at once")
    s.add_argument("--slurm-setup", dest="slurm_setup", action="append", default=None, metavar="CMD",
                   help="shell line run before each job (module load ..., source venv/bin/activate); repeatable")
    s.add_argument("--slurm-extra", dest="slurm_extra", action="append", default=None, metavar="KEY=V",
                   help="any other sbatch option, passed through (e.g. qos=high, constraint=a100); repeatable")


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
    parser = _Parser(prog="ncguide", formatter_class=fmt, description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"ncguide {_version()}",
                        help="print the installed version of ncguide and exit")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train", formatter_class=fmt, help="train one method with one seed", description=_TRAIN_DESCRIPTION,
        epilog=_config_epilog() + "\nexample:\n  ncguide train --method nearest-etf --dataset mnist1d --model cnn1d "
                                "--epochs 30 --seed 0 --out out/one",
    )
    t.add_argument("--method", metavar="M", help=_names(METHODS))
    t.add_argument("--seed", metavar="S", help="random seed (an integer in 0..2**32 - 1)")
    t.add_argument("--out", metavar="DIR", help="output directory of the run (required)")
    _add_run_flags(t)

    c = sub.add_parser(
        "compare", formatter_class=fmt, help="train every method x seed, then write the report",
        description=_COMPARE_DESCRIPTION,
        epilog=_config_epilog() + "\nexamples:\n  ncguide compare --config demo --out demo-out\n"
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
    c.add_argument("--train-acc-threshold", dest="train_acc_threshold", type=_fraction, metavar="A",
                   help="training accuracy the selection and the report count epochs to (default 0.99)")
    c.add_argument("--selection-metric", dest="selection_metric", metavar="M",
                   help="how a grid point wins: sustained (default: fewest epochs to stay at the threshold), first "
                        "(first hit), auc (mean training error), train_acc@E (accuracy at epoch E)")
    c.add_argument("--extend-edges", dest="extend_edges", metavar="N",
                   help="up to N times, extend a method's grid one step beyond an edge its winner sits at, then "
                        "reselect (default 0)")
    c.add_argument("--focus", dest="focus", metavar="METHOD",
                   help="the method of the report's verdict against the best other one (default nearest-etf when "
                        "compared; none: no verdict)")
    c.add_argument("--variant", dest="variants", action="append", default=None, metavar="NAME:KEY=V,...",
                   help="a named method with its own settings, e.g. nearest-etf-freeze:method=nearest-etf,"
                        "freeze_after=3; list NAME in --methods; repeatable")
    c.add_argument("--out", metavar="DIR", help="output directory of the comparison (required)")
    _add_launch_flags(c)
    _add_run_flags(c)

    r = sub.add_parser("report", formatter_class=fmt, help="(re)write figures and tables from a compare's logs",
                       description=_REPORT_DESCRIPTION)
    r.add_argument("dir", metavar="DIR", help="the --out directory of `ncguide compare`")
    r.add_argument("--train-acc-threshold", type=_fraction, default=None, metavar="A",
                   help="training accuracy to reach, as a fraction in (0, 1] (default 0.99)")
    r.add_argument("--nc1-threshold", type=_positive, default=None, metavar="X",
                   help="NC1 value to reach, > 0 (default: nc1_threshold of the runs' config)")
    r.add_argument("--report-epochs", dest="report_epochs", metavar="E1,E2",
                   help="epochs of the training-accuracy table (default: the compare's, else the last and its "
                        "midpoint)")
    r.add_argument("--focus", default="auto", metavar="METHOD",
                   help="the method of the verdict (default: the compare's, else nearest-etf; none: no verdict)")

    v = sub.add_parser("convert-checkpoint", formatter_class=fmt,
                       help="rewrite a checkpoint of ncguide 0.1 in the safe format (only files you trust)",
                       description=_CONVERT_DESCRIPTION)
    v.add_argument("files", nargs="+", metavar="FILE", help="checkpoint.pt files to convert in place")
    v.add_argument("--trust-source", dest="trust_source", action="store_true",
                   help="required: confirms the files are yours (converting unpickles their numpy arrays)")
    return parser


def _version() -> str:
    """The installed distribution's version (package metadata), or the source tree's when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ncguide")
    except PackageNotFoundError:
        from .. import __version__

        return f"{__version__} (not installed)"


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """An accuracy threshold: a number in (0, 1]."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (a fraction, 0.99 for 99%); got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# config resolution


def _load_yaml(path: str) -> dict:
    from .config import load_config

    # a file, or a shipped config by name (`demo`, `paper/ufm-k10`); ValueError naming the file: not found,
    # not UTF-8, malformed, not a mapping
    return dict(load_config(path) or {})


def _source(args: argparse.Namespace, key: str) -> str | None:
    """Where the value of config ``key`` (``a.b``: of field ``a``) came from: ``--set``, a flag, or the file."""
    top = key.partition(".")[0]
    for item in reversed(getattr(args, "overrides", None) or []):
        if item.partition("=")[0].strip().partition(".")[0] == top:
            return f"from --set {item if len(item) <= 60 else item[:57] + '...'}"
    dests = {field: dest for dest, field in _COMMON_FLAGS.items()}
    dest = dests.get(top, top)
    repeated = {"variants": "--variant", "grid": "--grid", "loggers": "--logger", "slurm_setup": "--slurm-setup",
                "slurm_extra": "--slurm-extra"}  # flags given once per item
    if top in repeated and getattr(args, dest, None):
        return f"from {repeated[top]}"
    if getattr(args, dest, None) is not None and isinstance(getattr(args, dest), (str, int, float)):
        flag = "--" + dest.replace("_", "-")
        if any(a.startswith(flag) for a in getattr(args, "_argv", [flag])):
            return f"from {flag}"
    if getattr(args, "config", None):
        try:
            if top in _load_yaml(args.config):
                return f"in config file {args.config}"
        except ValueError:
            pass
    return None


def resolve_config(args: argparse.Namespace, extra_flags: dict | None = None) -> tuple[dict, dict]:
    """(TrainConfig fields, compare settings) from defaults < ``--config`` < explicit flags and ``--set`` (a key
    given both by its flag and by ``--set`` is refused: one of the two would be dropped without a word).

    Compare settings are the keys ``methods`` and ``seeds`` (YAML top level, ``--methods``/``--seeds``,
    ``--set methods=a,b``); they are not TrainConfig fields."""
    from .config import ConfigError, apply_overrides, read_value

    d = _load_yaml(args.config) if args.config is not None else {}  # --config "": its error
    compare = {k: d.pop(k) for k in _COMPARE_KEYS if k in d}
    flags = {field: getattr(args, dest) for dest, field in _COMMON_FLAGS.items()}
    flags.update(extra_flags or {})
    d.update({k: read_value(k, v) for k, v in flags.items() if v is not None})  # by the schema, as --set and files
    given: dict[str, str] = {}
    by_flag = _keys_given_by_flags(args, extra_flags)
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if key in given and key:
            raise ConfigError(key, f"--set {key} is given twice (--set {given[key]} and --set {item}); give it once")
        given[key] = item
        top = key.partition(".")[0]
        if top in by_flag:  # the flag's value would be dropped without a word
            raise ConfigError(top, f"{top} is given twice ({by_flag[top]} and --set {top}=...); give it once")
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


def _keys_given_by_flags(args: argparse.Namespace, extra_flags: dict | None) -> dict[str, str]:
    """The config and compare keys the command line gives by a flag (not ``--set``): key -> the flag."""
    flags = {"grid": "--grid", "variants": "--variant", "loggers": "--logger", "slurm_setup": "--slurm-setup",
             "slurm_extra": "--slurm-extra"}
    keys = {field: dest for dest, field in _COMMON_FLAGS.items()} | {k: k for k in _COMPARE_KEYS}
    keys |= {k: k for k, v in (extra_flags or {}).items() if v is not None}
    return {key: flags.get(key, "--" + dest.replace("_", "-")) for key, dest in keys.items()
            if getattr(args, dest, None) is not None}


def _parse_variant_flags(items: list[str]) -> dict[str, dict]:
    """``["name:method=m,key=v"]`` → ``{"name": {"method": "m", "key": "v"}}`` (values typed later)."""
    from .config import ConfigError

    out: dict[str, dict] = {}
    for item in items:
        name, colon, rest = item.partition(":")
        pairs = [p.partition("=") for p in rest.split(",") if p.strip()]
        if not colon or not name.strip() or not pairs or any(not eq or not k.strip() for k, eq, _ in pairs):
            raise ValueError(f"bad --variant {item!r}; write NAME:method=M,KEY=V,..., e.g. "
                             "--variant nearest-etf-freeze:method=nearest-etf,freeze_after=3")
        if name.strip() in out:
            raise ConfigError("variants", f"--variant {name.strip()} is given twice; give each variant once")
        spec: dict[str, str] = {}
        for k, _, v in pairs:
            if k.strip() in spec:
                raise ConfigError("variants", f"--variant {item!r} sets {k.strip()} twice; give each key once")
            spec[k.strip()] = v.strip()
        out[name.strip()] = spec
    return out


_created: list[Path] = []  # folders _check_out made in this call of main (removed again if it fails)


def _check_out(out: str | None) -> Path:
    """The ``--out`` folder, created (with its missing parents, which ``main`` removes again if the command
    fails and leaves them empty); ``ValueError`` for a file or a folder that cannot be created or written."""
    if out is None:
        raise ValueError("the output directory is missing; add --out DIR")
    if not out.strip():  # Path("") is the current directory: a run would be written among the user's files
        raise ValueError(f"--out {out!r} is empty; give the output directory, e.g. --out out/run")
    path = Path(out)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        _created.extend(missing)
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
    from .build import check_buildable
    from .config import ConfigError, TrainConfig
    from .files import read_jsonl
    from .report import plot_figures, short_record
    from .runlog import METRICS
    from .train import train

    for item in args.overrides:  # a config file's compare keys are for compare; set explicitly, they are a mistake
        key = item.partition("=")[0].strip()
        if key.partition(".")[0] in _COMPARE_KEYS:
            raise ConfigError(key, f"{key} is a key of `ncguide compare`; `ncguide train` trains one method with one "
                                   "seed: use --method and --seed (or run ncguide compare)")
    d, compare = resolve_config(args, {"method": args.method, "seed": args.seed})  # methods/seeds of a compare
    cfg = TrainConfig.from_dict(d)
    _warn_variants(compare.get("variants"), cfg.method, args.config)
    file_runs = _file_runs(cfg, compare)  # a comparison file's keys that some of its methods use are quiet
    check_buildable(cfg)  # before creating --out (a mistake leaves nothing behind); --print-config too, as compare
    if args.print_config:
        _warn_ignored(cfg, set(d), args, file_runs)
        return _print_config(cfg.to_dict())
    if args.out is None or not args.out.strip():
        _check_out(args.out)  # its one-line error
    out = _check_out(args.out)
    _warn_ignored(cfg, set(d), args, file_runs)
    print(f"ncguide: training {cfg.method} on {cfg.dataset} ({cfg.model}), seed {cfg.seed} -> {out}", flush=True)
    record = train(cfg, out, resume=args.resume)
    figures = plot_figures({cfg.method: {cfg.seed: read_jsonl(out / METRICS)}}, out)  # a compare's, one run
    print(f"done: {short_record(record or {})}")
    print(f"logs: {out / 'metrics.jsonl'}  config: {out / 'config.json'}  checkpoint: {out / 'checkpoint.pt'}")
    print(f"figures: {', '.join(str(out / f) for f in figures[:1])} and {len(figures) - 1} more in {out}")
    return 0


def _warn_variants(variants, method: str, config: str | None) -> None:
    """``ncguide train``: one warning when the config file's ``variants:`` (read by ``compare`` only) would give the
    trained method settings of its own, naming the ``--set`` flags that apply them."""
    if not isinstance(variants, dict):
        return
    specs = {n: s for n, s in variants.items() if isinstance(s, dict) and s.get("method", n) == method}
    if not specs:
        return

    def flags(spec: dict) -> str:
        text = {True: "true", False: "false", None: "none"}
        return " ".join(f"--set {k}={text.get(v, v) if not isinstance(v, (list, dict)) else v}"
                        for k, v in spec.items() if k != "method") or "nothing"

    how = "; ".join(flags(s) if n == method else f"for variant {n!r}: {flags(s)}" for n, s in specs.items())
    warnings.warn(f"variants: in {config} applies to `ncguide compare` only; `ncguide train` trains the file's base "
                  f"settings for {method} (to train it as the comparison does, add {how})", stacklevel=2)


def _file_runs(cfg, compare: dict) -> list:
    """``ncguide train`` with a comparison's config file (one that lists ``methods:``): the configs of its methods
    (a variant with its own settings) as this run's; empty for a file of one run."""
    from .compare import parse_methods, parse_variants
    from .config import TrainConfig

    if not compare.get("methods"):
        return []
    try:
        variants = parse_variants(compare.get("variants"))
        names = parse_methods(compare["methods"], variants)
    except ValueError:  # compare's own errors; train does not read these keys
        return []
    runs = []
    for name in names:
        try:
            runs.append(TrainConfig.from_dict({**cfg.to_dict(), **variants.get(name, {"method": name})}))
        except ValueError:
            pass
    return runs


def _warn_ignored(cfg, given: set[str], args: argparse.Namespace, file_runs: list = ()) -> None:
    """One warning line per key the user set (file, flag, ``--set``) to a value other than its default that this run
    ignores (a resolved file, such as a run's config.json, lists every field at its default). A key that comes
    from a comparison's config file and that one of the file's methods uses is not a mistake: quiet."""
    from .config import ignored_fields, ignored_reason, non_default

    for key in sorted(ignored_fields(cfg) & non_default({k: getattr(cfg, k) for k in given})):
        source = _source(args, key)
        if (source or "").startswith("in config file") and any(key not in ignored_fields(c) for c in file_runs):
            continue
        warnings.warn(f"{ignored_reason(cfg, key)}: the value you set is ignored{f' ({source})' if source else ''}",
                      stacklevel=2)


def _print_config(d: dict) -> int:
    import yaml

    print(yaml.safe_dump(d, sort_keys=False), end="")
    return 0


def _cmd_compare(args) -> int:
    from .compare import (
        DEFAULT_METHODS,
        DEFAULT_SEEDS,
        DEFAULT_SELECTION_SEEDS,
        parse_methods,
        parse_seeds,
        parse_variants,
        run_compare,
    )
    from .config import ConfigError, with_defaults

    d, compare = resolve_config(args)
    for k in ("method", "seed"):  # set per run
        if k in d:
            raise ConfigError(k, f"{k} is set per run by `ncguide compare`; give the list as {k}s "
                                 f"(--{k}s, or {k}s: in the config file)")

    def parsed(key: str, parse, *extra):
        try:
            return parse(*extra)
        except ValueError as e:
            raise ConfigError(key, str(e)) from None

    variants = parsed("variants", parse_variants, compare.get("variants"))
    methods = parsed("methods", parse_methods, compare.get("methods", DEFAULT_METHODS), variants)
    seeds = parsed("seeds", parse_seeds, compare.get("seeds", DEFAULT_SEEDS))
    options = dict(grid=compare.get("grid"), variants=variants, report_epochs=compare.get("report_epochs"),
                   selection_seeds=compare.get("selection_seeds", DEFAULT_SELECTION_SEEDS),
                   launch={k: compare[k] for k in _LAUNCH_KEYS if k in compare})
    options.update({k: compare[k] for k in ("selection_metric", "extend_edges", "focus") if k in compare})
    if compare.get("train_acc_threshold") is not None:
        try:
            options["train_acc_threshold"] = _fraction(str(compare["train_acc_threshold"]))
        except argparse.ArgumentTypeError as e:
            raise ConfigError("train_acc_threshold", f"train_acc_threshold {e}") from None
    if args.print_config:  # everything is checked as for a run; nothing is trained or written
        settings = run_compare(d, methods, seeds, "unused", check_only=True, **options)
        cfg = with_defaults(d)  # checked by run_compare for every method
        return _print_config({**settings, **{k: v for k, v in cfg.items() if k not in ("method", "seed")}})
    if args.out is None or not args.out.strip():
        _check_out(args.out)  # its one-line error
    # run_compare checks every run (every grid point and variant) before it trains any
    run_compare(d, methods, seeds, _check_out(args.out), resume=args.resume, **options)
    return 0


def _cmd_report(args) -> int:
    from .report import check_report_epochs, report_thresholds, run_configs, summary_table, write_report

    out = Path(args.dir)
    if not args.dir.strip():
        raise ValueError("DIR is empty; give the --out directory of `ncguide compare`")
    if not out.is_dir():
        raise ValueError(f"{args.dir!r} is not a directory; give the --out directory of `ncguide compare`")
    thresholds = report_thresholds(out)
    if args.train_acc_threshold is not None:
        thresholds["train_acc"] = (">=", args.train_acc_threshold)
    if args.nc1_threshold is not None:
        thresholds["nc1"] = ("<=", args.nc1_threshold)
    report_epochs = check_report_epochs(args.report_epochs)
    last = max((c["epochs"] for c in run_configs(out) if isinstance(c.get("epochs"), int)), default=None)
    if report_epochs and last is not None and report_epochs[-1] > last:  # a column of "—" for every run
        raise ValueError(f"--report-epochs {report_epochs[-1]} is past the last epoch of every run ({last}); choose "
                         f"epochs in 0..{last}")
    summary = write_report(out, thresholds, report_epochs, focus=args.focus)
    if summary.get("partial"):
        print(f"partial report: the tuning is under way. {summary['partial']}\n")
    for x in summary["excluded"]:
        print(f"ncguide: warning: {x['run']} left out of the report: {x['why']}", file=sys.stderr)
    print(summary_table(summary))
    print(f"\nreport: {out / 'report.md'} (figures {out}/*.png, numbers {out / 'summary.json'})")
    return 0


def _cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import convert_checkpoint

    if not args.trust_source:
        return _error("convert-checkpoint unpickles the numpy arrays each file holds; pass --trust-source only for "
                      "files you or ncguide 0.1 wrote")
    for path in args.files:
        print(f"converted {convert_checkpoint(path, trust_source=True)}")
    return 0


_COMMANDS = {"train": _cmd_train, "compare": _cmd_compare, "report": _cmd_report,
             "convert-checkpoint": _cmd_convert_checkpoint}


def _error(msg: str, status: int = 2) -> int:
    print(f"ncguide: error: {msg}", file=sys.stderr)
    return status


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"ncguide: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}",
          file=sys.stderr)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # the run could not save its files: exit 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ncguide``; returns the exit status (0 ok, 1 diverged, files not writable or runs failed,
    2 usage or config error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and argparse usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    args._argv = parser._argv
    _created.clear()
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        status = _run(args)
    if status not in (0, 130):  # a failed command leaves no empty folders of its own behind
        for folder in _created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
    _created.clear()
    return status


@contextmanager
def _sigterm_as_ctrl_c(enabled: bool) -> Iterator[None]:
    """``train`` and ``compare``: a SIGTERM (a scheduler's kill, ``kill PID``) stops like Ctrl-C — the run in this
    process checkpoints at its current step, runs in child processes are stopped, exit 130 — as it does for
    the children themselves (``run_one``)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    from .run_one import sigterm_as_ctrl_c

    previous = signal.signal(signal.SIGTERM, sigterm_as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        with _sigterm_as_ctrl_c(args.command in ("train", "compare")):
            return _COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = open(os.devnull, "w")  # silences the flush at exit
        return 1
    except KeyboardInterrupt:
        print("\nncguide: interrupted; run the same command again to resume (finished runs are kept)",
              file=sys.stderr)
        return 130
    except OSError as e:
        if os.environ.get("NCGUIDE_TRACEBACK"):
            raise
        where = e.filename or getattr(args, "out", None) or getattr(args, "dir", None)
        if e.errno in _WRITE_ERRNOS:
            return _error(f"cannot write {where}: {e.strerror}; free some space or choose another --out (running "
                          "the same command again resumes from the last checkpoint)", 1)
        if e.filename is None and not isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError,
                                                     IsADirectoryError)):
            raise
        return _error(f"{e.strerror or e}: {where}; check the path and its permissions")
    except ValueError as e:
        if os.environ.get("NCGUIDE_TRACEBACK"):
            raise
        from .checkpoint import ResumeError
        from .config import ConfigError

        if isinstance(e, ResumeError):
            msg = f"{e.problem}; {e.advice('--no-resume', '--out')}"
        else:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, ConfigError):
            source = _source(args, e.key)
            named = source and any(w.startswith("--") and w in msg for w in source.split()[1:2])  # said already
            if source and not named and (not args.config or args.config not in msg):
                msg = f"{msg} ({source})"
        notes = getattr(e, "__notes__", None)  # e.g. where in training it happened
        return _error(f"{msg} ({'; '.join(notes)})" if notes else msg)
    except ImportError as e:
        return _error(f"{e}; install the missing package (pip install 'ncguide[experiments]' has them all)")
    except RuntimeError as e:
        from .launch import LaunchError
        from .train import NonFiniteLossError

        if isinstance(e, NonFiniteLossError) and not os.environ.get("NCGUIDE_TRACEBACK"):
            print(f"ncguide: training diverged: {e}", file=sys.stderr)
            return 1
        if isinstance(e, LaunchError) and not os.environ.get("NCGUIDE_TRACEBACK"):
            return _error(str(e), 1)
        raise

"""Run configuration: one dataclass with every knob of a training run, the schema its values are read
by, and its I/O.

    cfg = TrainConfig.from_dict(apply_overrides(load_config("demo"), ["lr=0.1"]))

**One schema, one rule wherever a value enters** (a YAML/JSON file, ``--set``, a flag, ``--variant``,
``--grid``, ``TrainConfig.from_dict``): each field's type is its annotation below, its range or choices
are in ``RULES``, and :func:`read_value` reads every value by them. A value is either typed (YAML, JSON,
Python) or text (the command line; quoted YAML), read by the same grammar:

- integer: a Python ``int`` or the text of one in decimal digits (``30``, ``-1``). Nothing is truncated:
  ``2.7``, ``3.0``, ``"3e0"`` and ``True`` are refused (write ``3``);
- number: an ``int`` or ``float``, or its text (``0.1``, ``1e-3``); finite;
- true/false: a ``bool`` or ``true/false/yes/no/on/off``; none: ``None`` or ``none/null/~`` or empty text;
- text: a ``str`` (a number for a text field is refused); a list of integers: a list, ``1,2`` or ``[1, 2]``;
  a mapping: a dict with string keys, or its YAML text ``{a: 1}``;

then checked against its range (``epochs >= 0``, ``num_classes >= 2``, every integer at most 2**63 - 1,
the largest torch holds; ``seed`` in 0..2**32 - 1). Files are read by a YAML loader that refuses a key
given twice (two ``<<`` merge keys in one mapping too), reads integers and numbers in decimal notation only (YAML
1.1 would read ``010`` as 8, ``1:30`` as 90 and ``1:30.5`` as 90.5) and ``1e-3`` as a number (YAML 1.2), keeps
YAML 1.1's ``yes/no/on/off`` as true/false (the words the schema reads from text), reads a date as text, and
refuses an alias inside its own anchor, aliases that expand to more than 100,000 values and tags of other Python
types (``!!set``, ``!!binary``, ...). An integer of more than 4300 digits (Python's ``int()`` limit) is refused
by the YAML and JSON loaders naming its key. ``from_dict`` rejects unknown keys; ``validate()`` (called by
``from_dict`` and by ``train``) checks the types and ranges of a built config and the rules between
fields, and raises :class:`ConfigError` (a ``ValueError`` carrying the offending ``key``) with a one-line
message that states the rule.

**Keys a run ignores.** ``USED_ONLY_WHEN`` says, in one table, which fields a run uses only under some
method, data set, optimiser or schedule, or another value (``delta`` only for the nearest-ETF heads,
``momentum`` only for sgd, ``num_classes`` only for ``ufm``, ``data_dir`` not for ``ufm``, ``digits`` and
``npz:``, ``gamma`` only with step milestones, ``amp`` not on the CPU, ...); :func:`ignored_fields` gives
those a config ignores. A grid over such a key is refused (``compare``); a key set explicitly to a value other
than its default, but ignored, is warned about (``ncguide``).
``head_kwargs`` cannot hold a top-level field (``head_kwargs.temperature`` would override ``temperature``
behind the saved config's back).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..heads import METHODS
from ..means import SCHEDULES as MEAN_SCHEDULES
from ..solve import SOLVERS
from .optim import OPTIMIZERS, SCHEDULES

__all__ = ["ConfigError", "TrainConfig", "load_config", "apply_overrides", "with_defaults", "field_names", "DEVICES",
           "AMP", "RULES", "Rule", "USED_ONLY_WHEN", "read_value", "read_integer", "ignored_fields", "ignored_reason",
           "non_default", "INT_MAX", "SEED_MAX"]

DEVICES = ("auto", "cpu", "cuda")
AMP = ("none", "bf16")
AUGMENTATIONS = ("crop-flip", "flip")  # data.loader.AUGMENTATIONS (not imported: it would load the data package)
FIXED_ETF = ("random", "canonical")  # heads.FixedETFHead's rotations
INT_MAX = 2**63 - 1  # the largest integer torch (int64) holds: every integer field stops here
SEED_MAX = 2**32 - 1  # numpy's global generator takes seeds below 2**32: distinct seeds stay distinct everywhere


class ConfigError(ValueError):
    """A bad config value. ``key`` names the field (``model_kwargs.widths`` for an entry of a dict field), so
    that a caller can say where the value came from (the ``ncguide`` command names the file or the flag)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class TrainConfig:
    """Every knob of a run. Units: epochs are passes over the training set; ``lr`` is the base rate
    the schedule multiplies (for ``optimizer="agd"`` the rate is ``agd_gain`` instead)."""

    # what to train
    method: str = "nearest-etf"  # standard | fixed-etf | nearest-etf | nearest-etf-nograd | standard-plain
    dataset: str = "digits"  # a name in ncguide.experiments.data.DATASETS, or npz:PATH
    model: str = "mlp"  # a name in ncguide.experiments.models.MODELS
    model_kwargs: dict = field(default_factory=dict)  # builder options, e.g. {"widths": [256, 256]}
    head_kwargs: dict = field(default_factory=dict)  # extra head options, e.g. {"solve_dtype": ...}
    data_dir: str | None = None
    train_per_class: int | None = None  # subsample the training set (None: all)
    test_per_class: int | None = None
    num_classes: int = 10  # ufm only
    samples_per_class: int = 100  # ufm only
    feature_dim: int = 64  # ufm only

    # optimisation
    epochs: int = 30
    batch_size: int = 128  # global batch (split over ranks under torchrun)
    optimizer: str = "sgd"  # sgd | adam | adamw | agd
    lr: float = 0.05
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 5e-4  # must be 0 for agd
    agd_gain: float = 1.0  # agd's gain g: 1 in Bernstein et al.'s AGD; the paper's code uses 10
    schedule: str = "cosine"  # constant | step | cosine (per step, after warm-up)
    warmup_epochs: float = 0.0  # linear warm-up length (fractional epochs allowed)
    step_milestones: list[int] = field(default_factory=list)  # epochs at which "step" multiplies by gamma
    gamma: float = 0.1
    label_smoothing: float = 0.0

    # head (docs/maths.md)
    temperature: float = 5.0
    delta: float = 1e-3
    alpha_min: float = 1e-4
    ema_alpha: float = 0.1  # mean_schedule "ema": the current batch's fixed weight α in the running means
    mean_schedule: str = "paper"  # paper | cumulative | ema
    solver: str = "auto"  # auto | polar | polar-gram | polar-ns | riemannian (see ncguide.solve.nearest_etf)
    # nearest-etf(-nograd) only: freeze U after this many epochs (fractional allowed; the head gets
    # round(freeze_after × steps per epoch) training updates, then is a fixed ETF at its own U). None: never
    freeze_after: float | None = None

    # the paper's protocol (docs/paper-protocol.md)
    bias_free: bool = False  # no biases anywhere, batch norm without affine parameters, standard heads without bias
    fixed_etf: str = "random"  # fixed-etf's U_0: random (Haar, drawn from the seed) | canonical (I_d's first K columns)

    # data pipeline and evaluation
    stratified: bool = False  # every batch holds every class in proportion
    augment: str | None = None  # loader augmentation name (None: off)
    eval_every: int = 1  # epochs between evaluations (and always at epoch 0 and at the end)
    eval_batch_size: int = 1024
    num_workers: int = 4  # loader processes for file-backed data sets (imagenet); in-memory sets use none

    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 (CUDA only; ignored with a warning on CPU)
    compile: bool = False  # torch.compile the backbone
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only on CUDA)
    check_every: int = 50  # CUDA: steps between non-finite-loss checks (CPU checks every step)
    nc1_threshold: float = 0.1  # report: "epochs until nc1 < threshold" (not used by training)
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])  # + csv, tensorboard, wandb (loggers.py)

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:  # copies, so that a config never shares a caller's dict or list
        if isinstance(self.model_kwargs, dict) or self.model_kwargs is None:
            self.model_kwargs = dict(self.model_kwargs or {})
        if isinstance(self.head_kwargs, dict) or self.head_kwargs is None:
            self.head_kwargs = dict(self.head_kwargs or {})
        if isinstance(self.step_milestones, (list, tuple)) or self.step_milestones is None:
            self.step_milestones = list(self.step_milestones or [])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Config from a (partial) dict, each value read by :func:`read_value`; :class:`ConfigError` for an
        unknown key or a bad value."""
        unknown = [k for k in d if k not in _hints()]
        if unknown:
            raise _unknown_key(unknown[0])
        cfg = cls(**{k: read_value(k, v) for k, v in d.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, check_registries: bool = True) -> None:
        """Check every field's type and range (typed values only: no text here) and the rules between fields
        (``check_registries``: also dataset/model names against the registries); :class:`ConfigError` naming
        the first bad field."""
        for f in dataclasses.fields(self):
            _read(f.name, getattr(self, f.name), text=False)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            _bad("nesterov", "nesterov=True needs optimizer='sgd' with momentum > 0")
        if self.optimizer == "agd" and self.weight_decay != 0:
            _bad("weight_decay", f"optimizer 'agd' takes no weight decay (got weight_decay={self.weight_decay}); "
                                 "set weight_decay=0")
        if self.epochs and self.warmup_epochs > self.epochs:
            _bad("warmup_epochs", f"warmup_epochs must lie in [0, epochs={self.epochs}]; got {self.warmup_epochs}")
        for name in self.head_kwargs:  # the head gets the field's value from build.head_kwargs, then head_kwargs'
            if name in _hints():
                unit = " (in epochs)" if name == "freeze_after" else ""
                _bad(f"head_kwargs.{name}", f"set {name}{unit}, not head_kwargs.{name}: head_kwargs.{name} would "
                                            f"override {name}={getattr(self, name)!r} while the saved config still "
                                            f"says {name}={getattr(self, name)!r}")
        if "rotation" in self.head_kwargs:  # fixed-etf's rotation is the field fixed_etf
            _bad("head_kwargs.rotation", "set fixed_etf (random or canonical), not head_kwargs.rotation")
        if self.model == "ufm" and "feature_dim" in self.model_kwargs:  # the UFM's width is the field feature_dim
            _bad("model_kwargs.feature_dim", "set feature_dim, not model_kwargs.feature_dim: for model 'ufm' the "
                                             f"field feature_dim={self.feature_dim} sizes the features")
        for name in ("model_kwargs", "head_kwargs"):
            if self.bias_free and getattr(self, name).get("bias") is True:
                _bad(f"{name}.bias", f"bias_free=true removes every bias; drop {name}.bias=true or set bias_free=false")
        if self.freeze_after is not None and self.method not in _NEAREST:
            _bad("freeze_after", f"freeze_after applies to nearest-etf and nearest-etf-nograd only; method "
                                 f"{self.method!r} has no U to freeze (set freeze_after=none)")
        if check_registries:
            from .data import DATASETS
            from .models import MODELS

            if not (self.dataset in DATASETS or self.dataset.startswith("npz:")):
                names = ", ".join(n for n in DATASETS if n != "npz")
                _bad("dataset", f"unknown dataset {self.dataset!r} (valid: {names}, npz:PATH)")
            if self.dataset.startswith("npz") and not self.dataset[4:].strip():
                _bad("dataset", f"dataset {self.dataset!r} needs the path of your arrays: npz:PATH, e.g. "
                                "npz:data/mine.npz")
            _one_of("model", self.model.lower(), tuple(MODELS))


# ------------------------------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class Rule:
    """What a field accepts beyond its annotated type: ``choices``, or a range ``lo``..``hi`` (``lo_open`` /
    ``hi_open``: that end excluded; for a list field, the range of each item). ``words``: the rule in words
    when the generic ones would not say it (e.g. "a number of epochs >= 0")."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    words: str | None = None


ANY = Rule()


def one_of(*choices: str) -> Rule:
    return Rule(choices=choices)


def at_least(lo: float, words: str | None = None) -> Rule:
    return Rule(lo=lo, words=words)


def above(lo: float) -> Rule:
    return Rule(lo=lo, lo_open=True)


# every TrainConfig field, in its order, one line each (a new field needs its line: tests/experiments/test_config.py)
RULES: dict[str, Rule] = {
    "method": one_of(*METHODS),
    "dataset": ANY,  # a registry name or npz:PATH (validate)
    "model": ANY,  # a registry name (validate)
    "model_kwargs": ANY,  # names and types checked against the builder (build.check_buildable)
    "head_kwargs": ANY,  # no top-level field (validate); names checked against the head (build.check_buildable)
    "data_dir": ANY,
    "train_per_class": at_least(1),
    "test_per_class": at_least(1),
    "num_classes": at_least(2),
    "samples_per_class": at_least(1),
    "feature_dim": at_least(1),
    "epochs": at_least(0),
    "batch_size": at_least(1),
    "optimizer": one_of(*OPTIMIZERS),
    "lr": above(0),
    "momentum": Rule(lo=0, hi=1, hi_open=True),
    "nesterov": ANY,
    "weight_decay": at_least(0),
    "agd_gain": above(0),
    "schedule": one_of(*SCHEDULES),
    "warmup_epochs": at_least(0),
    "step_milestones": at_least(1, "epochs >= 1"),
    "gamma": at_least(0),
    "label_smoothing": Rule(lo=0, hi=1, hi_open=True),
    "temperature": above(0),
    "delta": at_least(0),
    "alpha_min": Rule(lo=0, hi=1),
    "ema_alpha": Rule(lo=0, hi=1, lo_open=True),
    "mean_schedule": one_of(*MEAN_SCHEDULES),
    "solver": one_of(*SOLVERS),
    "freeze_after": at_least(0, "None or a number of epochs >= 0"),
    "bias_free": ANY,
    "fixed_etf": one_of(*FIXED_ETF),
    "stratified": ANY,
    "augment": one_of(*AUGMENTATIONS),
    "eval_every": at_least(1),
    "eval_batch_size": at_least(1),
    "num_workers": at_least(0),
    "seed": Rule(lo=0, hi=SEED_MAX),
    "device": one_of(*DEVICES),
    "amp": one_of(*AMP),
    "compile": ANY,
    "deterministic": ANY,
    "check_every": at_least(1),
    "nc1_threshold": above(0),
    "loggers": ANY,  # names checked by loggers.check_loggers (it imports their packages)
}


@dataclass(frozen=True)
class When:
    """A condition on another field: its value is one of ``values`` (or, ``negate``, none of them); or, given
    ``test``, ``test(value)`` holds (``says``: what a value that fails it means, for the warning)."""

    values: tuple = ()
    negate: bool = False
    test: typing.Callable[[Any], bool] | None = None
    says: str = ""

    def holds(self, value: Any) -> bool:
        return self.test(value) if self.test is not None else (value in self.values) != self.negate


def _not_on_cpu(device: str) -> bool:
    """Whether a run of ``device`` may train on CUDA: ``auto`` picks CUDA when this machine has it."""
    if device != "auto":
        return device != "cpu"
    import torch

    return torch.cuda.is_available()


_NEAREST = ("nearest-etf", "nearest-etf-nograd")
_MEANS = ("fixed-etf", *_NEAREST)  # the heads that keep running means (fixed-etf: the global mean of its eval bias)
_SCALED = tuple(m for m in METHODS if m != "standard-plain")  # the heads that scale features by temperature

# The fields a run uses only under some settings (every condition must hold); any other field every run uses.
USED_ONLY_WHEN: dict[str, dict[str, When]] = {
    "temperature": {"method": When(_SCALED),  # and not with head_kwargs.normalize_features=false (h~ = h)
                    "head_kwargs": When(test=lambda hk: hk.get("normalize_features") is not False,
                                        says="the features are not scaled")},
    "delta": {"method": When(_NEAREST)},
    "solver": {"method": When(_NEAREST)},
    "mean_schedule": {"method": When(_MEANS)},
    "alpha_min": {"method": When(_MEANS), "mean_schedule": When(("paper",))},
    "ema_alpha": {"method": When(_MEANS), "mean_schedule": When(("ema",))},
    "freeze_after": {"method": When(_NEAREST)},
    "fixed_etf": {"method": When(("fixed-etf",))},
    "lr": {"optimizer": When(("agd",), negate=True)},  # agd's rate is agd_gain
    "agd_gain": {"optimizer": When(("agd",))},
    "momentum": {"optimizer": When(("sgd",))},
    "nesterov": {"optimizer": When(("sgd",))},
    "step_milestones": {"schedule": When(("step",))},
    "gamma": {"schedule": When(("step",)), "step_milestones": When(([],), negate=True)},  # gamma^0 without milestones
    "amp": {"device": When(test=_not_on_cpu, says="training runs on the CPU")},  # bf16 autocast is CUDA's only
    "check_every": {"device": When(test=_not_on_cpu, says="training runs on the CPU")},  # the CPU checks every step
    "num_classes": {"dataset": When(("ufm",))},
    "samples_per_class": {"dataset": When(("ufm",)), "train_per_class": When((None,))},  # else train_per_class
    "feature_dim": {"model": When(("ufm",))},
    "test_per_class": {"dataset": When(("ufm",), negate=True)},  # the UFM has no test split
    "num_workers": {"dataset": When(("imagenet",))},  # loader processes for file-backed data only
    # ufm and digits read no files, npz:PATH reads PATH; mnist1d caches its generated data there
    "data_dir": {"dataset": When(test=lambda d: str(d).partition(":")[0] not in ("ufm", "digits", "npz"),
                                 says="the data set reads no files from data_dir")},
}


def ignored_fields(cfg: TrainConfig) -> set[str]:
    """The fields whose value cannot change the run ``cfg`` (``USED_ONLY_WHEN``), e.g. ``{"delta", "solver",
    ...}`` for ``method="standard"``."""
    return {name for name, when in USED_ONLY_WHEN.items()
            if not all(w.holds(getattr(cfg, other)) for other, w in when.items())}


def ignored_reason(cfg: TrainConfig, name: str) -> str:
    """Why ``cfg`` ignores field ``name``, e.g. ``"momentum is not used with optimizer='adam'"``."""
    for other, w in USED_ONLY_WHEN.get(name, {}).items():
        if not w.holds(getattr(cfg, other)):
            return f"{name} is not used with {other}={getattr(cfg, other)!r}{f', where {w.says}' if w.says else ''}"
    return f"{name} is used by every run"


def non_default(d: dict[str, Any]) -> set[str]:
    """The fields in ``d`` (a config dict, values typed or text) whose value differs from the field's default: the
    keys a user set, when ``d`` is a resolved file that lists every field (``config.json``, a compare's
    ``config.yaml``). A value the schema refuses counts as set (its error comes from elsewhere)."""
    default, out = TrainConfig(), set()
    for key, value in d.items():
        if key in _hints():
            try:
                if read_value(key, value) == getattr(default, key):
                    continue
            except ConfigError:
                pass
            out.add(key)
    return out


def read_value(key: str, value: Any) -> Any:
    """``value`` (typed, or text from the command line) for field ``key``, read by the schema (module docstring)
    and checked against ``RULES[key]``; :class:`ConfigError` naming the key otherwise."""
    if key not in _hints():
        raise _unknown_key(key)
    return _read(key, value, text=True)


def read_integer(key: str, value: Any, rule: Rule) -> int:
    """An integer outside ``TrainConfig`` (a count of seeds, an epoch of the report) by the same rule as the
    integer fields: a typed ``int`` or decimal text, within ``rule``; :class:`ConfigError` naming ``key``."""
    return _check(key, _scalar(key, value, int, text=True, optional=False), rule)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(tp, False)``."""
    args = typing.get_args(tp)
    if type(None) not in args:
        return tp, False
    return next(a for a in args if a is not type(None)), True


def _is_none(value: Any, text: bool) -> bool:
    """``None``, or (reading text) an empty, ``none``, ``null`` or ``~`` string."""
    return value is None or (text and isinstance(value, str) and value.strip().lower() in ("", "none", "null", "~"))


def _read(key: str, value: Any, text: bool) -> Any:
    """``read_value``; ``text=False`` (``validate``): a value of the field's own type only, no text to read."""
    tp, rule = _hints()[key], RULES[key]
    tp, optional = _unwrap_optional(tp)
    if optional and _is_none(value, text):
        return None
    origin = typing.get_origin(tp) or tp
    if origin is list:
        items = _list_items(key, value) if text else value
        if not isinstance(items, list):
            raise _type_error(key, value, tp, optional)
        (item_tp,) = typing.get_args(tp)
        return [_check(key, _scalar(key, v, item_tp, text, optional=False, shown=value), rule, item=True)
                for v in items]
    if origin is dict:
        if text and isinstance(value, str):
            value = _parse_text(value, key) if value.strip() else {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(key, value, tp, optional)
        if key == "head_kwargs":
            return {name: _head_option(name, v, text) for name, v in value.items()}
        return dict(value)
    return _check(key, _scalar(key, value, origin, text, optional), rule, optional)


def _head_option(name: str, value: Any, text: bool) -> Any:
    """An entry of ``head_kwargs`` read by the type its head's constructor declares (``bias: bool``: ``"off"`` is
    false or refused, never a true string), as a field of that type is; an option of no head, a top-level field
    (``validate`` refuses both) and a type of no field (``solve_dtype``) are left to the checks that follow."""
    tp, optional = _unwrap_optional(_head_option_types().get(name))
    if optional and _is_none(value, text):
        return None
    if name in _hints() or tp not in (bool, int, float, str):
        return value
    return _scalar(f"head_kwargs.{name}", value, tp, text, optional)


@functools.cache
def _head_option_types() -> dict[str, Any]:
    """Every head option's declared type (an option has one type in every head that takes it)."""
    from ..heads import head_option_types

    return {name: tp for method in METHODS for name, tp in head_option_types(method).items()}


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")  # YAML's words for true and false


def _scalar(key: str, value: Any, tp: type, text: bool, optional: bool, shown: Any = None) -> Any:
    """One value of type ``tp`` (int, float, bool, str), typed or (``text``) from its text."""
    is_text = text and isinstance(value, str)
    if tp is str:
        if isinstance(value, str):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if is_text and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if is_text and _INT_TEXT.fullmatch(value.strip()):
            try:
                return int(value.strip())
            except ValueError:  # more digits than Python converts: far beyond any range
                raise ConfigError(key, f"{key} = {_shown(value.strip())} is too large: integers stop at "
                                       f"{INT_MAX} (2**63 - 1)") from None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            number = None
            if is_text:
                try:
                    number = float(value.strip())
                except ValueError:
                    pass
        if number is not None:
            try:
                number = float(number)
            except OverflowError:  # an int beyond the float range
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(key, f"{key} must be a finite number; got {_shown(value)}")
            return number
    raise _type_error(key, value if shown is None else shown, list[tp] if shown is not None else tp, optional)


def _check(key: str, value: Any, rule: Rule, optional: bool = False, item: bool = False) -> Any:
    """``value`` if it keeps ``rule`` (choices, range; integers at most ``INT_MAX``), else ConfigError."""
    if value is None:
        return value
    if rule.choices is not None and value not in rule.choices:
        raise ConfigError(key, f"unknown {key} {value!r} (valid: {', '.join(rule.choices)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    lo_ok = rule.lo is None or (value > rule.lo if rule.lo_open else value >= rule.lo)
    hi = rule.hi if rule.hi is not None else (INT_MAX if isinstance(value, int) else None)
    hi_ok = hi is None or (value < hi if rule.hi_open else value <= hi)
    if lo_ok and hi_ok:
        return value
    if isinstance(value, int) and value > INT_MAX and rule.hi is None:
        raise ConfigError(key, f"{key} = {_shown(value)} is too large: integers stop at {INT_MAX} (2**63 - 1)")
    words = _words(rule, isinstance(value, int), optional, item)
    raise ConfigError(key, f"{key} must {'' if words.startswith('lie in') else 'be '}{words}; got {_shown(value)}")


def _words(rule: Rule, integer: bool, optional: bool, item: bool) -> str:
    """The rule in words: ``an integer >= 0``, ``> 0``, ``lie in [0, 1)``, ``an integer in 0..4294967295``."""
    if rule.words:
        return rule.words
    if rule.lo is not None and rule.hi is not None:
        if integer:
            text = f"an integer in {rule.lo}..{rule.hi}"
        else:
            text = f"lie in {'(' if rule.lo_open else '['}{rule.lo:g}, {rule.hi:g}{')' if rule.hi_open else ']'}"
    else:
        text = f"{'>' if rule.lo_open else '>='} {rule.lo:g}" if rule.lo is not None else f"<= {rule.hi:g}"
        text = f"an integer {text}" if integer else text
    if item:
        text = f"a list of {text.replace('an integer', 'integers')}"
    return f"{text} or none" if optional else text


def _list_items(key: str, value: Any) -> Any:
    """The items of a list given as a list, ``1,2`` or ``[1, 2]``."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            return _parse_text(stripped, key)
        return [v.strip() for v in stripped.split(",") if v.strip()]
    return value


def _type_error(key: str, value: Any, tp: Any, optional: bool) -> ConfigError:
    names = {int: "an integer written in digits, like 3, not 3.0 or 3e0", float: "a number", bool: "true or false",
             str: "text", dict: "a mapping of names to values", list[int]: "a list of integers, e.g. [2, 5]",
             list[str]: "a list of names, e.g. [jsonl, csv]"}
    what = names.get(tp, names.get(typing.get_origin(tp), str(tp)))
    return ConfigError(key, f"bad value {_shown(value)} for config key {key!r} (expected {what}"
                            f"{' or none' if optional else ''})")


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a number of 5000 digits is not shown whole)."""
    if isinstance(value, int) and value.bit_length() > 14_000:  # repr() refuses more than 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------- files


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict completed with today's defaults: a run written before a field existed ran with
    the behaviour that field's default keeps, so it still counts as the same config."""
    return {**TrainConfig().to_dict(), **saved}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or ``.json``) config file into a dict (keys are checked later, by ``from_dict``). ``path``
    may also name a config shipped with the package (``"demo"``, ``"paper/ufm-k10"``: ``shipped_configs.py``).

    ``ValueError`` naming the file for one that is missing, not UTF-8 text, malformed, not a mapping of
    names to values, or that gives a key twice (at any depth)."""
    from .shipped_configs import find_config

    path = find_config(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#x} on line {line}); "
                         "save it as UTF-8") from None
    if str(path).endswith(".json"):
        try:
            d = json.loads(text, object_pairs_hook=_json_mapping, parse_int=_json_int)
        except json.JSONDecodeError as e:
            raise ValueError(f"malformed JSON in {path} at line {e.lineno}, column {e.colno}: {e.msg}; "
                             "fix the syntax of that line") from None
        except _JSONRefusal as e:
            raise ValueError(f"config file {path}: {e}") from None
        except RecursionError:
            raise ValueError(f"config file {path} nests lists or mappings too deeply; flatten it") from None
    else:
        import yaml

        try:
            d = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            if isinstance(e, _yaml_refusal()):
                raise ValueError(f"config file {path}{where}: {problem}") from None
            raise ValueError(f"malformed YAML in {path}{where}: {problem}; fix the syntax of that line") from None
        except RecursionError:
            raise ValueError(f"config file {path} nests lists or mappings too deeply; flatten it") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a mapping of key: value; got {type(d).__name__}")
    bad = next((k for k in d if not isinstance(k, str)), None)
    if bad is not None:
        raise ValueError(f"config file {path} has a key {bad!r} that is not a name; keys are field names")
    return d


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``d`` with ``key=value`` overrides applied (``value`` read by :func:`read_value`;
    ``field.key=value`` sets an entry of a dict field, its value parsed as YAML). A key given twice is refused."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    hints = _hints()
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"bad override {item!r}: expected key=value")
        top, dot, sub = key.partition(".")
        if top not in hints:
            raise _unknown_key(top)
        name = f"{top}.{sub.strip()}" if dot else top
        if name in given:
            raise ConfigError(name, f"{name} is set twice ({given[name]!r} and {item!r}); give each key once")
        given[name] = item
        if dot:
            if typing.get_origin(hints[top]) is not dict and hints[top] is not dict:
                raise ConfigError(top, f"bad override {item!r}: {top!r} is not a dict field")
            if not sub.strip():
                raise ConfigError(top, f"bad override {item!r}: name the entry, e.g. {top}.NAME=VALUE")
            out[top] = {**dict(out.get(top) or {}), sub.strip(): _parse_text(value, key)}
        else:
            out[top] = read_value(top, value)
    return out


# ---------------------------------------------------------------------------------------- helpers


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(name, f"unknown {name} {value!r} (valid: {', '.join(valid)})")


def _bad(key: str, message: str) -> None:
    raise ConfigError(key, message)


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, field_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(key, f"unknown config key {key!r} ({hint}valid: {', '.join(field_names())})")


def _parse_text(text: str, key: str = "") -> Any:
    """A value typed on the command line, read as YAML by the same loader as files (``1e-3``, ``[1, 2]``,
    ``{a: 1}``; a key twice refused)."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        where = f" for config key {key!r}" if key else ""
        problem = getattr(e, "problem", None) if isinstance(e, _yaml_refusal()) else None
        why = problem or f"not valid YAML ({str(e).splitlines()[0]})"
        raise ConfigError(key, f"bad value {_shown(text)}{where}: {why}") from None
    except RecursionError:
        raise ConfigError(key, f"bad value {_shown(text)} for config key {key!r}: nested too deeply") from None


class _JSONRefusal(ValueError):
    pass


class _Digits(str):
    """A JSON integer of more than ``_MAX_DIGITS`` digits (Python's ``int()`` refuses it without naming a key): the
    mapping that holds it refuses it, naming its key."""


def _json_int(text: str) -> int | _Digits:
    return _Digits(text) if len(text.lstrip("-")) > _MAX_DIGITS else int(text)


def _json_mapping(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _JSONRefusal(f"key {k!r} is given twice in one mapping; keep one")
        digits = next((x for x in (v if isinstance(v, list) else [v]) if isinstance(x, _Digits)), None)
        if digits is not None:
            raise _JSONRefusal(f"{k}: {_too_many_digits('an integer', digits)}")
        out[k] = v
    return out


@functools.cache
def _yaml_refusal() -> type:
    """The error our YAML loader raises for what it refuses (not a syntax error)."""
    import yaml

    class YAMLRefusal(yaml.MarkedYAMLError):
        pass

    return YAMLRefusal


@functools.cache
def _yaml_loader() -> type:
    """``yaml.SafeLoader`` made strict (module docstring): a key twice in a mapping, two ``<<`` merge keys in one
    mapping, an alias inside its own anchor (a value that contains itself), aliases that expand to more than
    ``_YAML_MAX_VALUES`` values, an integer or number not in decimal notation (YAML 1.1 reads ``010`` as 8,
    ``0x10`` as 16, ``1:30`` as 90, ``1:30.5`` as 90.5, ``1_000`` as 1000), an integer of more than
    ``_MAX_DIGITS`` digits, and the tags that give other Python types (``!!set``, ``!!binary``, ``!!omap``,
    ``!!pairs``, ``!!timestamp``) are refused; dates are text, ``1e-3`` is a number (YAML 1.2), and
    ``yes/no/on/off`` (any case) stay YAML 1.1's true and false, as the schema reads them from text."""
    import yaml

    refusal = _yaml_refusal()
    merge, int_tag, float_tag = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

    class Loader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self._open: set[str] = set()  # anchors of the collections being composed

        # -- composing: an alias of an anchor still open would make a value that contains itself
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent) and self.peek_event().anchor in self._open:
                event = self.peek_event()
                raise refusal(None, None, f"alias *{event.anchor} lies inside its own anchor &{event.anchor} (a value "
                                          "that contains itself); write the value out", event.start_mark)
            return super().compose_node(parent, index)

        def compose_sequence_node(self, anchor):
            return self._composing(anchor, super().compose_sequence_node)

        def compose_mapping_node(self, anchor):
            return self._composing(anchor, super().compose_mapping_node)

        def _composing(self, anchor, compose):
            self._open.add(anchor)
            try:
                return compose(anchor)
            finally:
                self._open.discard(anchor)

        def compose_document(self):
            node = super().compose_document()
            sizes: dict[int, int] = {}

            def size(n) -> int:  # values once every alias is expanded (json.dumps of the config expands them)
                if id(n) not in sizes:
                    children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
                        n.value if isinstance(n, yaml.SequenceNode) else []
                    sizes[id(n)] = 1 + sum(size(c) for c in children)
                return sizes[id(n)]

            if node is not None and size(node) > _YAML_MAX_VALUES:
                raise refusal(None, None, f"its aliases expand to {size(node)} values (more than {_YAML_MAX_VALUES}); "
                                          "write the values out", node.start_mark)
            return node

        # -- constructing
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                merges = [k for k, _ in node.value if k.tag == merge]
                if len(merges) > 1:  # YAML would keep the last one's keys only
                    lines = " and ".join(str(k.start_mark.line + 1) for k in merges[:2])
                    raise refusal(None, None, f"two << merge keys in one mapping (lines {lines}); merge several "
                                              "with one: <<: [*a, *b]", merges[1].start_mark)
                for key_node, value_node in node.value:
                    if key_node.tag == merge:  # ``<<: *base`` merges: its keys may be overridden
                        continue
                    key = self.construct_object(key_node, deep=True)
                    _check_digits(key, value_node, refusal)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class says so
                        continue
                    if first is not None:
                        line = key_node.start_mark.line + 1
                        where = f"lines {first} and {line}" if first != line else f"line {line}"
                        raise refusal(None, None, f"key {key!r} is given twice ({where}); keep one",
                                      key_node.start_mark)
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    def decimal_int(loader, node):
        text = loader.construct_scalar(node)
        if _SEXAGESIMAL.fullmatch(text):
            raise refusal(None, None, _sexagesimal(text), node.start_mark)
        if not _INT_TEXT.fullmatch(text):
            raise refusal(None, None, f"{_shown_text(text)} is not an integer in decimal digits; write it as one "
                                      "(YAML 1.1 would read it in another base)", node.start_mark)
        if len(text) > _MAX_DIGITS:
            raise refusal(None, None, _too_many_digits("an integer", text), node.start_mark)
        return int(text)

    def decimal_float(loader, node):
        text = loader.construct_scalar(node)
        if _SEXAGESIMAL.fullmatch(text):
            raise refusal(None, None, _sexagesimal(text), node.start_mark)
        if not _FLOAT_TEXT.fullmatch(text):
            raise refusal(None, None, f"{_shown_text(text)} is not a number in decimal notation; write it as one "
                                      "(YAML 1.1 would read 1:30.5 as 90.5 and 1_0.5 as 10.5)", node.start_mark)
        return yaml.SafeLoader.construct_yaml_float(loader, node)

    def other_type(loader, node):
        raise refusal(None, None, f"YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not read in config "
                                  "files (values are numbers, text, true/false, none, lists and mappings)",
                      node.start_mark)

    timestamp = "tag:yaml.org,2002:timestamp"
    Loader.yaml_implicit_resolvers = {c: [(t, r) for t, r in rs if t != timestamp]  # a date is text
                                      for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_constructor(int_tag, decimal_int)
    Loader.add_constructor(float_tag, decimal_float)
    for tag in ("timestamp", "binary", "set", "omap", "pairs"):
        Loader.add_constructor(f"tag:yaml.org,2002:{tag}", other_type)
    Loader.add_implicit_resolver(float_tag, re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                 list("-+0123456789."))
    return Loader


_YAML_MAX_VALUES = 100_000  # values of a config once its aliases are expanded (ours hold a few hundred)
_MAX_DIGITS = 4300  # Python's own limit on the digits int() reads: any integer beyond is far beyond every range
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"  # decimal, or YAML's .inf, .nan
                         r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")


def _check_digits(key: Any, node: Any, refusal: type) -> None:
    """The YAML loader's refusal naming ``key`` for an integer of more than ``_MAX_DIGITS`` digits in ``node`` or in
    a list under it (a mapping under it names its own keys)."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_digits(key, item, refusal)
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int" and len(node.value) > _MAX_DIGITS:
        raise refusal(None, None, f"{key}: {_too_many_digits('an integer', node.value)}", node.start_mark)


def _too_many_digits(what: str, text: str) -> str:
    return f"{what} of {len(text.lstrip('+-'))} digits is too large: integers stop at {INT_MAX} (2**63 - 1)"


# YAML 1.1's base-60 numbers (8:00:00 is 28800, 1:30.5 is 90.5): written like a time or a duration
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


def _sexagesimal(text: str) -> str:
    """The refusal of an unquoted ``8:00:00``: YAML 1.1 reads it as a number in base 60, so quote it."""
    return (f"{_shown_text(text)} is read by YAML 1.1 as a number in base 60; if it is a time or a duration, quote "
            f"it: \"{_shown_text(text)}\" (a number is written in decimal notation)")


def _shown_text(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."

"""Run configuration: one dataclass with every knob of a training run, and its I/O.

    cfg = TrainConfig.from_dict(apply_overrides(load_config("demo"), ["lr=0.1"]))

``from_dict`` rejects unknown keys; ``validate()`` (called by ``from_dict`` and by ``train``)
checks names and ranges and raises :class:`ConfigError` (a ``ValueError`` carrying the offending
``key``) with a one-line message listing the valid choices. Overrides are ``key=value`` strings;
``value`` is coerced to the field's type (``none``/``null`` for optional fields, ``a,b,c`` or ``[a, b]``
for lists, JSON/YAML for dicts), and ``model_kwargs.width=0.5`` sets one entry of a dict field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..heads import METHODS
from ..means import SCHEDULES as MEAN_SCHEDULES
from ..solve import SOLVERS
from .optim import OPTIMIZERS, SCHEDULES

__all__ = ["ConfigError", "TrainConfig", "load_config", "apply_overrides", "with_defaults", "field_names", "DEVICES",
           "AMP"]

DEVICES = ("auto", "cpu", "cuda")
AMP = ("none", "bf16")
AUGMENTATIONS = ("crop-flip", "flip")  # data.loader.AUGMENTATIONS (not imported: it would load the data package)
FIXED_ETF = ("random", "canonical")  # heads.FixedETFHead's rotations


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
    def __post_init__(self) -> None:
        self.model_kwargs = dict(self.model_kwargs or {})
        self.head_kwargs = dict(self.head_kwargs or {})
        self.step_milestones = [int(m) for m in self.step_milestones or []]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Config from a (partial) dict; ValueError for an unknown key or an invalid value."""
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise _unknown_key(unknown[0])
        hints = _hints()
        cfg = cls(**{k: _coerce(k, v, hints[k]) for k, v in d.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, check_registries: bool = True) -> None:
        """Check names and ranges (``check_registries``: also dataset/model names against the registries);
        :class:`ConfigError` naming the first bad field."""
        for f in dataclasses.fields(self):  # NaN/inf would pass the range checks below (or fail them oddly)
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"{f.name} must be a finite number; got {value}")
        _one_of("method", self.method, METHODS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("device", self.device, DEVICES)
        _one_of("amp", self.amp, AMP)
        _one_of("mean_schedule", self.mean_schedule, MEAN_SCHEDULES)
        _one_of("solver", self.solver, SOLVERS)
        if self.augment is not None:
            _one_of("augment", self.augment, AUGMENTATIONS)
        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "check_every", "num_classes",
                     "samples_per_class", "feature_dim"):
            if getattr(self, name) < 1 and not (name == "epochs" and self.epochs == 0):
                _bad(name, f"{name} must be >= 1; got {getattr(self, name)}")
        if self.num_classes < 2:
            _bad("num_classes", f"num_classes must be >= 2; got {self.num_classes}")
        for name in ("lr", "agd_gain", "temperature", "nc1_threshold"):
            if not getattr(self, name) > 0:
                _bad(name, f"{name} must be > 0; got {getattr(self, name)}")
        for name in ("weight_decay", "delta", "gamma"):
            if getattr(self, name) < 0:
                _bad(name, f"{name} must be >= 0; got {getattr(self, name)}")
        for name in ("momentum", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                _bad(name, f"{name} must lie in [0, 1); got {getattr(self, name)}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            _bad("nesterov", "nesterov=True needs optimizer='sgd' with momentum > 0")
        if self.optimizer == "agd" and self.weight_decay != 0:
            _bad("weight_decay", f"optimizer 'agd' takes no weight decay (got weight_decay={self.weight_decay}); "
                                 "set weight_decay=0")
        if self.warmup_epochs < 0 or (self.epochs and self.warmup_epochs > self.epochs):
            _bad("warmup_epochs", f"warmup_epochs must lie in [0, epochs={self.epochs}]; got {self.warmup_epochs}")
        if any(m < 1 for m in self.step_milestones):
            _bad("step_milestones", f"step_milestones must be epochs >= 1; got {self.step_milestones}")
        if self.num_workers < 0:
            _bad("num_workers", f"num_workers must be >= 0; got {self.num_workers}")
        if not 0 <= self.alpha_min <= 1:
            _bad("alpha_min", f"alpha_min must lie in [0, 1]; got {self.alpha_min}")
        if not 0 < self.ema_alpha <= 1:
            _bad("ema_alpha", f"ema_alpha must lie in (0, 1]; got {self.ema_alpha}")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                _bad(name, f"{name} must be >= 1 or None; got {getattr(self, name)}")
        self._validate_freeze_after()
        _one_of("fixed_etf", self.fixed_etf, FIXED_ETF)
        if "rotation" in self.head_kwargs:
            _bad("head_kwargs", "set fixed_etf (random or canonical), not head_kwargs.rotation")
        for name in ("model_kwargs", "head_kwargs"):
            if self.bias_free and getattr(self, name).get("bias") is True:
                _bad(f"{name}.bias", f"bias_free=true removes every bias; drop {name}.bias=true or set bias_free=false")
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

    def _validate_freeze_after(self) -> None:
        if "freeze_after" in self.head_kwargs:
            _bad("head_kwargs", "set freeze_after (in epochs), not head_kwargs.freeze_after")
        if self.freeze_after is None:
            return
        if isinstance(self.freeze_after, bool) or not self.freeze_after >= 0:
            _bad("freeze_after", f"freeze_after must be None or a number of epochs >= 0; got {self.freeze_after!r}")
        if self.method not in ("nearest-etf", "nearest-etf-nograd"):
            _bad("freeze_after", f"freeze_after applies to nearest-etf and nearest-etf-nograd only; method "
                             f"{self.method!r} has no U to freeze (set freeze_after=none)")


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict completed with today's defaults: a run written before a field existed ran with
    the behaviour that field's default keeps, so it still counts as the same config."""
    return {**TrainConfig().to_dict(), **saved}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or ``.json``) config file into a dict (keys are checked later, by ``from_dict``). ``path``
    may also name a config shipped with the package (``"demo"``, ``"paper/ufm-k10"``: ``shipped_configs.py``).

    ``ValueError`` naming the file for one that is missing, not UTF-8 text, malformed, or not a mapping of
    names to values."""
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
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"malformed JSON in {path} at line {e.lineno}, column {e.colno}: {e.msg}; "
                             "fix the syntax of that line") from None
    else:
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"malformed YAML in {path}{where}: {problem}; fix the syntax of that line") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a mapping of key: value; got {type(d).__name__}")
    bad = next((k for k in d if not isinstance(k, str)), None)
    if bad is not None:
        raise ValueError(f"config file {path} has a key {bad!r} that is not a name; keys are field names")
    return d


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``d`` with ``key=value`` overrides applied (``value`` coerced to the field type;
    ``field.key=value`` sets an entry of a dict field, its value parsed as YAML)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    hints = _hints()
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"bad override {item!r}: expected key=value")
        top, dot, sub = key.partition(".")
        if top not in hints:
            raise _unknown_key(top)
        if dot:
            if hints[top] is not dict:
                raise ConfigError(top, f"bad override {item!r}: {top!r} is not a dict field")
            if not sub.strip():
                raise ConfigError(top, f"bad override {item!r}: name the entry, e.g. {top}.NAME=VALUE")
            out[top] = {**dict(out.get(top) or {}), sub.strip(): _parse_scalar(value, key)}
        else:
            out[top] = _coerce(top, value, hints[top])
    return out


# ---------------------------------------------------------------------------------------- helpers


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


def _parse_scalar(text: str, key: str = "") -> Any:
    """A value typed on the command line: YAML if available (``1e-3``, ``[1, 2]``, ``{a: 1}``), else JSON."""
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = f" for config key {key!r}" if key else ""
        raise ConfigError(key, f"bad value {text!r}{where}: not valid YAML ({str(e).splitlines()[0]})") from None


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` (a string from the command line, or a parsed YAML value) to type ``tp``."""
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp) or tp
    try:
        if origin is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if origin is int:
            if isinstance(value, float) and not value.is_integer() or isinstance(value, bool):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is list:
            if isinstance(value, str):
                value = value.strip().strip("[]")
                value = [v for v in (s.strip() for s in value.split(",")) if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            (item_tp,) = typing.get_args(tp) or (str,)
            return [_coerce(key, v, item_tp) for v in value]
        if origin is dict:
            if isinstance(value, str):
                value = _parse_scalar(value, key) if value.strip() else {}
            if value is None:
                return {}
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    name = tp.__name__ if isinstance(tp, type) else str(tp)  # list[int], not list
    raise ConfigError(key, f"bad value {value!r} for config key {key!r} (expected {name})")

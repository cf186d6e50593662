"""From a ``TrainConfig`` to the parts of a run: the data set, the backbone, the head and the loaders.

    ds = load_data(cfg)
    model = build_backbone(cfg, ds)
    head = build_run_head(cfg, model.feature_dim, ds.num_classes, steps_per_epoch(cfg, ds))

``check_buildable(cfg)`` checks, before any data is loaded or anything is written, everything those calls
would reject later: the data set's files (``data.dataset_info``), the subset sizes against the data set's
smallest class (``train_per_class``, ``test_per_class``), the model options and their types, the model on the
data set's inputs (built and run on the ``meta`` device: no memory, no arithmetic), sizes that cannot fit in
this machine's memory (the UFM's table and data set, any model's parameters), the head options and
``feature_dim >= num_classes`` for the ETF heads, the loader options, and, for ``optimizer="agd"``, that every
trained parameter is a weight matrix or kernel (``bias_free``).

The unconstrained-features model (UFM) is the one setting with special rules, and they all live in
this file (see "UFM" below).
"""

from __future__ import annotations

import collections.abc
import hashlib
import inspect
import json
import math
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..heads import Head, build_head, head_options
from .config import ConfigError, TrainConfig
from .data import Dataset, DatasetLoader, TensorLoader, _parse_name, dataset_info, load_dataset
from .loggers import check_loggers
from .models import MODELS, build_model

__all__ = [
    "ETF_METHODS", "data_fingerprint", "load_data", "build_backbone", "build_run_head", "head_kwargs", "make_loaders",
    "steps_per_epoch", "check_buildable", "check_all_buildable",
]

ETF_METHODS = ("fixed-etf", "nearest-etf", "nearest-etf-nograd")  # need feature_dim >= num_classes


def load_data(cfg: TrainConfig) -> Dataset:
    """The data set of ``cfg`` (subsets and normalisation as ``data.load_dataset`` does them)."""
    kw: dict[str, Any] = dict(_ufm_data_options(cfg))
    if cfg.test_per_class is not None:
        kw["test_per_class"] = cfg.test_per_class
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed, train_per_class=cfg.train_per_class, **kw)


def data_fingerprint(cfg: TrainConfig) -> str | None:
    """``sha256:<hex>`` of the file behind ``npz:PATH`` (a user's file may change under the same name), None
    for the named data sets (fixed by their name and options) and for a file that cannot be read."""
    if not cfg.dataset.lower().startswith("npz:"):
        return None
    h = hashlib.sha256()
    try:
        with Path(cfg.dataset.partition(":")[2]).expanduser().open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def build_backbone(cfg: TrainConfig, ds: Dataset) -> nn.Module:
    """The backbone ``cfg.model`` with ``cfg.model_kwargs``, for the inputs and classes of ``ds``."""
    kw = {**_ufm_model_options(cfg, ds), **cfg.model_kwargs}
    return build_model(cfg.model, ds.input_shape, ds.num_classes, bias_free=cfg.bias_free, **kw)


def head_kwargs(cfg: TrainConfig, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The head options of ``cfg``: the config fields the method's head takes, then ``cfg.head_kwargs``.

    ``cfg.freeze_after`` (epochs) becomes the head's ``freeze_after = round(cfg.freeze_after × steps_per_epoch)``
    training updates; ``steps_per_epoch`` (:func:`steps_per_epoch`) is required when it is set.
    ``cfg.fixed_etf`` is the fixed-ETF head's ``rotation``; ``cfg.bias_free`` gives standard heads ``bias=False``."""
    fields = dict(temperature=cfg.temperature, delta=cfg.delta, solver=cfg.solver, seed=cfg.seed,
                  mean_schedule=cfg.mean_schedule, alpha_min=cfg.alpha_min, ema_alpha=cfg.ema_alpha,
                  rotation=cfg.fixed_etf, **({"bias": False} if cfg.bias_free else {}))
    if cfg.freeze_after is not None:
        if steps_per_epoch is None:
            raise ValueError("freeze_after is in epochs: head_kwargs(cfg, steps_per_epoch) needs the steps per epoch "
                             "(build.steps_per_epoch)")
        fields["freeze_after"] = round(cfg.freeze_after * steps_per_epoch)
    options = head_options(cfg.method)
    return {**{k: v for k, v in fields.items() if k in options}, **cfg.head_kwargs}


def build_run_head(cfg: TrainConfig, feature_dim: int, num_classes: int, steps_per_epoch: int | None = None) -> Head:
    """The head of ``cfg.method`` on ``feature_dim``-dim features; ``ValueError`` if an ETF head cannot fit.
    ``steps_per_epoch``: as :func:`head_kwargs` (needed with ``cfg.freeze_after``)."""
    if cfg.method in ETF_METHODS and feature_dim < num_classes:
        widen = ("raise feature_dim" if cfg.model == "ufm"
                 else f"widen the model (e.g. a last layer of width >= {num_classes}, in model_kwargs)")
        raise ConfigError(
            "feature_dim" if cfg.model == "ufm" else "model_kwargs",
            f"method {cfg.method!r} needs feature_dim >= num_classes, got {feature_dim} < {num_classes} "
            f"(model {cfg.model!r} on dataset {cfg.dataset!r}): {widen}",
        )
    return build_head(cfg.method, feature_dim, num_classes, **head_kwargs(cfg, steps_per_epoch))


def steps_per_epoch(cfg: TrainConfig, ds: Dataset, world: int = 1, batch_norm: bool = False) -> int:
    """Optimiser steps per epoch: the length of the training loader :func:`make_loaders` builds (global
    batches: the same on every rank)."""
    n = _num_train(ds)
    return n // cfg.batch_size if _drop_last(cfg, n, world, batch_norm) else -(-n // cfg.batch_size)


# ------------------------------------------------------------------------------------ up-front checks


def check_buildable(cfg: TrainConfig) -> None:
    """:class:`ConfigError` naming the key for anything in ``cfg`` that ``load_data``, ``build_backbone``,
    ``build_run_head`` or ``make_loaders`` would reject, without loading the data (see the module docstring).
    Not checked: the files of a data set that would be downloaded, and subset sizes of ``imagenet`` (its class
    folders are counted when the run starts)."""
    cfg.validate()
    check_loggers(cfg.loggers)  # names, and the packages of tensorboard / wandb
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "device='cuda' but CUDA is not available; use device=cpu or auto")
    try:
        shape, k = dataset_info(cfg.dataset, cfg.data_dir, num_classes=cfg.num_classes)
    except ValueError as e:
        key = "data_dir" if "data_dir" in str(e) or cfg.dataset in ("fashion-mnist", "imagenet") else "dataset"
        raise ConfigError(key, str(e)) from None
    if (cfg.model == "ufm") != (cfg.dataset == "ufm"):
        key = "model" if cfg.dataset != "ufm" else "dataset"
        raise ConfigError(key, f"model 'ufm' goes with dataset 'ufm' only (its inputs are sample indices, one free "
                               f"feature each); got model {cfg.model!r} on dataset {cfg.dataset!r}")
    _check_subset_sizes(cfg, k)
    if cfg.model == "ufm":
        _check_ufm_size(cfg, k)  # before the model is built, even on the meta device: its sizes may overflow int64
    model = _check_model(cfg, shape, k)
    _check_parameter_memory(cfg, model)
    feature_dim = int(model.feature_dim)
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if cfg.method in ETF_METHODS and feature_dim < k:
        build_run_head(cfg, feature_dim, k, steps_per_epoch=1)  # raises its ConfigError
    options = head_options(cfg.method)
    for name in cfg.head_kwargs:
        if name not in options:
            raise ConfigError(f"head_kwargs.{name}", f"head_kwargs.{name} is not an option of method {cfg.method!r} "
                                                     f"(it takes {', '.join(sorted(options))})")
    kwargs = head_kwargs(cfg, steps_per_epoch=1)  # the step count only scales freeze_after (checked by validate)
    try:
        with torch.random.fork_rng(devices=[]):  # a head may draw its initial rotation: leave the RNG as it was
            head = build_head(cfg.method, feature_dim, k, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError("head_kwargs", f"method {cfg.method!r} cannot be built with head options "
                                         f"{kwargs}: {_first_line(e)}") from None
    if cfg.optimizer == "agd":
        _check_agd(cfg, model, head)
    if batch_norm and cfg.batch_size < 2:
        raise ConfigError("batch_size", f"batch_size={cfg.batch_size} gives batches of one sample, and model "
                                        f"{cfg.model!r} has batch norm, which needs at least 2; use batch_size >= 2")
    if cfg.dataset == "imagenet" and (cfg.stratified or cfg.augment is not None):
        raise ConfigError("stratified" if cfg.stratified else "augment",
                          f"dataset {cfg.dataset!r} is file-backed: stratified and augment need in-memory data (its "
                          "own transforms augment it); set stratified=false, augment=none")
    if cfg.augment is not None and len(shape) != 3:
        raise ConfigError("augment", f"augment={cfg.augment!r} needs images (C, H, W); dataset {cfg.dataset!r} has "
                                     f"inputs of shape {shape}; set augment=none")


def check_all_buildable(configs: Iterable[TrainConfig]) -> None:
    """:func:`check_buildable` for each distinct config (seeds aside), before any of them trains."""
    seen = set()
    for cfg in configs:
        tag = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "seed"}, sort_keys=True, default=str)
        if tag not in seen:
            seen.add(tag)
            check_buildable(cfg)


def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else line[:197] + "..."


# Samples per class of the splits of the public data sets that are downloaded or read from fixed files
# (train, test); every class has the same number.
_CLASS_SIZES = {"fashion-mnist": (6000, 1000), "cifar10": (5000, 1000), "cifar100": (500, 100), "stl10": (500, 800)}


def _smallest_classes(cfg: TrainConfig, num_classes: int) -> tuple[int, int] | None:
    """The fewest samples of any class in the training and in the test split of ``cfg.dataset`` (before subsets),
    without reading its inputs: a fixed table, the labels of an npz file, or the small generated sets themselves;
    ``None`` where unknown without reading the files (``imagenet``) and for the ``ufm`` (it generates its samples)."""
    key, path = _parse_name(cfg.dataset)
    if key in _CLASS_SIZES:
        return _CLASS_SIZES[key]
    if key == "npz":  # read and validated by dataset_info: its labels are integers in 0..K-1
        with np.load(Path(path).expanduser(), allow_pickle=False) as f:
            return tuple(int(np.bincount(f[y].astype(np.int64).ravel(), minlength=num_classes).min())
                         for y in ("y_train", "y_test"))
    if key in ("digits", "mnist1d"):  # small: generated or read in well under a second
        ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed)
        return tuple(int(torch.bincount(y, minlength=num_classes).min()) for y in (ds.y_train, ds.y_test))
    return None


def _check_subset_sizes(cfg: TrainConfig, num_classes: int) -> None:
    """``train_per_class``/``test_per_class`` at most the smallest class of their split (the subsets are balanced)."""
    wanted = {"train_per_class": cfg.train_per_class, "test_per_class": cfg.test_per_class}
    if cfg.dataset == "ufm" or all(v is None for v in wanted.values()):
        return
    try:
        sizes = _smallest_classes(cfg, num_classes)
    except ValueError as e:  # e.g. the package that generates the data set is missing
        raise ConfigError("dataset", str(e)) from None
    if sizes is None:
        return
    for (key, per_class), smallest, split in zip(wanted.items(), sizes, ("training", "test")):
        if per_class is not None and per_class > smallest:
            raise ConfigError(key, f"{key}={per_class} asks for {per_class} samples of every class, but the smallest "
                                   f"class of dataset {cfg.dataset!r} has {smallest} in its {split} split; use "
                                   f"{key} <= {smallest}")


def _memory_bytes() -> int | None:
    """The physical memory of this machine (``None`` where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _check_ufm_size(cfg: TrainConfig, num_classes: int) -> None:
    """The UFM's table (``N × feature_dim`` float32 features, ``N = num_classes × samples per class``) and its
    data set (two int64 values per sample) must fit in this machine's memory — the run creates them there —
    and ``N × feature_dim`` within int64, where torch counts tensor sizes."""
    per_key = "train_per_class" if cfg.train_per_class is not None else "samples_per_class"
    per_class = cfg.train_per_class if cfg.train_per_class is not None else cfg.samples_per_class
    n = num_classes * per_class
    need = 4 * n * cfg.feature_dim + 16 * n
    memory = _memory_bytes()
    if need <= (memory if memory is not None else 2**63 - 1) and n * cfg.feature_dim <= 2**63 - 1:
        return
    factors = {"num_classes": num_classes, per_key: per_class, "feature_dim": cfg.feature_dim}
    key = max(factors, key=lambda name: factors[name])  # the factor that makes it huge
    have = f"the {_gib(memory)} of memory of this machine" if memory is not None else "what torch can index"
    raise ConfigError(key, f"the UFM of num_classes={num_classes} × {per_key}={per_class} samples × feature_dim="
                           f"{cfg.feature_dim} needs {_gib(need)} for its features and samples, more than {have}; "
                           f"lower {key}")


def _check_parameter_memory(cfg: TrainConfig, model: nn.Module) -> None:
    """The model's parameters alone (built on the meta device: their sizes, no memory) must fit in this machine's
    memory, where the run builds them (gradients and optimiser state need more)."""
    memory = _memory_bytes()
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    if memory is None or need <= memory:
        return
    count = sum(p.numel() for p in model.parameters())
    key = "feature_dim" if cfg.model == "ufm" else "model_kwargs" if cfg.model_kwargs else "model"
    raise ConfigError(key, f"model {cfg.model!r} with model_kwargs {cfg.model_kwargs} has {count:,} parameters, "
                           f"{_gib(need)}, more than the {_gib(memory)} of memory of this machine; make it smaller")


def _check_agd(cfg: TrainConfig, model: nn.Module, head: nn.Module) -> None:
    """AGD updates weight matrices and kernels only (``optim.AGD``): refuse a bias or an affine batch norm."""
    named = [*(("model." + n, p) for n, p in model.named_parameters()),
             *(("head." + n, p) for n, p in head.named_parameters())]
    bad = next((n for n, p in named if p.requires_grad and p.dim() < 2), None)
    if bad is not None:
        raise ConfigError("bias_free", f"optimizer 'agd' supports bias-free networks only, and {bad} (model "
                                       f"{cfg.model!r}, method {cfg.method!r}) is not a weight matrix or kernel; set "
                                       "bias_free=true (no biases, batch norm without affine parameters)")


def _check_model(cfg: TrainConfig, shape: tuple, num_classes: int) -> nn.Module:
    """``cfg.model`` for inputs of ``shape`` on the meta device: its options checked by name and type, then the
    model built and run on a batch of 3 (its ``feature_dim`` is checked against the output)."""
    key = cfg.model.lower()
    builder = MODELS[key]
    hints = typing.get_type_hints(builder)
    params = {p.name: p for p in inspect.signature(builder).parameters.values() if p.kind == p.KEYWORD_ONLY}
    fixed = {"num_samples"} if key == "ufm" else set()  # set from the data set
    for name, value in cfg.model_kwargs.items():
        if name not in params or name in fixed:
            why = "is set from the data set" if name in fixed else f"is not an option of model {cfg.model!r}"
            valid = ", ".join(n for n in params if n not in fixed) or "none"
            raise ConfigError(f"model_kwargs.{name}", f"model_kwargs.{name} {why} (its options: {valid})")
        if name in hints and not _fits(value, hints[name]):
            raise ConfigError(f"model_kwargs.{name}", f"model_kwargs.{name} must be {_describe(hints[name])} for "
                                                      f"model {cfg.model!r}; got {value!r}")
    n = cfg.train_per_class or cfg.samples_per_class
    kw = {**({"num_samples": num_classes * n, "feature_dim": cfg.feature_dim} if key == "ufm" else {}),
          **cfg.model_kwargs}
    where = f"model {cfg.model!r} on dataset {cfg.dataset!r} (inputs of shape {shape})"
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, shape, num_classes, bias_free=cfg.bias_free, **kw)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        raise ConfigError("model_kwargs" if cfg.model_kwargs else "model",
                          f"{where} cannot be built with model_kwargs {cfg.model_kwargs}: {_first_line(e)}") from None
    feature_dim = int(model.feature_dim)
    if key != "ufm":
        try:
            out = model(torch.zeros((3, *shape), device="meta"))
        except NotImplementedError:  # an operation without a meta kernel: nothing to conclude
            out = None
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            raise ConfigError("model", f"{where}: the model does not fit these inputs ({_first_line(e)}); "
                                       "choose a model for this data set") from None
        if out is not None and tuple(out.shape) != (3, feature_dim):
            raise ConfigError("model", f"{where}: the model maps a batch of 3 to features of shape "
                                       f"{tuple(out.shape)}, not (3, {feature_dim}); choose a model for this data set")
    return model


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value (from YAML or ``--set``) has the type a builder's option is annotated with."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and (item is Any or all(_fits(v, item) for v in value))
    return True  # anything else: the builder judges


def _describe(hint: Any, plural: bool = False) -> str:
    """``int | Sequence[int] | None`` → "an int, a list of ints or none"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a, plural) for a in args]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if hint is type(None):
        return "none"
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    name = getattr(hint, "__name__", str(hint))
    names = {"int": ("an int", "ints"), "float": ("a finite number", "numbers"), "bool": ("true or false", "booleans"),
             "str": ("a string", "strings")}
    return names[name][plural] if name in names else name


def make_loaders(cfg: TrainConfig, ds: Dataset, device, rank: int = 0, world: int = 1,
                 batch_norm: bool = False) -> tuple[Any, dict]:
    """(training loader, ``{"train", "test"}`` evaluation loaders); each rank gets its slice of every batch.

    The last, short training batch is dropped (its samples are seen in other epochs, in other orders)
    when it would leave a rank an empty slice (DDP), or, for a model with batch norm (``batch_norm``),
    a slice of a single sample, on which batch norm cannot train. A ``batch_size`` that gives every
    rank a single sample of every batch is refused for such a model."""
    lazy = ds.is_lazy
    n_train = _num_train(ds)
    least = 2 * world if batch_norm else world
    if batch_norm and min(cfg.batch_size, n_train) < least:
        raise ValueError(
            f"batch_size={cfg.batch_size} gives {'each process ' if world > 1 else ''}batches of one sample "
            f"({n_train} training samples), and model {cfg.model!r} has batch norm, which needs at least 2; "
            f"use batch_size >= {least}"
        )
    drop_last = _drop_last(cfg, n_train, world, batch_norm)
    if lazy:
        if cfg.stratified or cfg.augment is not None:
            raise ValueError(f"dataset {cfg.dataset!r} is file-backed: stratified and augment need in-memory "
                             "data (its own transforms augment it); set stratified=false, augment=none")
        common = dict(seed=cfg.seed, device=device, rank=rank, world_size=world, num_workers=cfg.num_workers)
        loader = DatasetLoader(ds.train_set, cfg.batch_size, shuffle=True, drop_last=drop_last, **common)
        evals = {"train": DatasetLoader(ds.train_set, cfg.eval_batch_size, shuffle=False, **common)}
        if ds.test_set is not None and len(ds.test_set):
            evals["test"] = DatasetLoader(ds.test_set, cfg.eval_batch_size, shuffle=False, **common)
        return loader, evals
    loader = TensorLoader(ds.x_train, ds.y_train, cfg.batch_size, shuffle=True, stratified=cfg.stratified,
                          seed=cfg.seed, augment=cfg.augment, drop_last=drop_last, device=device, rank=rank,
                          world_size=world)
    common = dict(shuffle=False, device=device, rank=rank, world_size=world)
    evals = {"train": TensorLoader(ds.x_train, ds.y_train, cfg.eval_batch_size, **common)}
    if _has_test_split(ds):
        evals["test"] = TensorLoader(ds.x_test, ds.y_test, cfg.eval_batch_size, **common)
    return loader, evals


def _num_train(ds: Dataset) -> int:
    return len(ds.train_set) if ds.is_lazy else len(ds.y_train)


def _drop_last(cfg: TrainConfig, n_train: int, world: int, batch_norm: bool) -> bool:
    """Whether the short last training batch is dropped (see :func:`make_loaders`)."""
    # each rank gets a near-equal slice of every global batch (torch.tensor_split): at least 1 sample
    # needs a batch of >= world, at least 2 (batch norm) a batch of >= 2·world
    least = 2 * world if batch_norm else world
    return 0 < n_train % cfg.batch_size < least and (world > 1 or batch_norm)


# --------------------------------------------------------------------------------------------- UFM
# In the unconstrained-features model the "inputs" are sample indices and the "backbone" is a table of
# free features (models/ufm.py). So: the config's num_classes and samples_per_class size the generated
# data set (data/offline.py; train_per_class, when set, wins), its num_samples and the config's
# feature_dim size the model, and there is no test split (its indices would name training samples).


def _ufm_data_options(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.dataset != "ufm":
        return {}
    return dict(num_classes=cfg.num_classes, samples_per_class=cfg.samples_per_class)


def _ufm_model_options(cfg: TrainConfig, ds: Dataset) -> dict[str, Any]:
    if cfg.model != "ufm":
        return {}
    return dict(num_samples=len(ds.y_train), feature_dim=cfg.feature_dim)


def _has_test_split(ds: Dataset) -> bool:
    return ds.name != "ufm" and ds.y_test is not None and len(ds.y_test) > 0

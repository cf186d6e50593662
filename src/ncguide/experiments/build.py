"""From a ``TrainConfig`` to the parts of a run: the data set, the backbone, the head and the loaders.

    ds = load_data(cfg)
    model = build_backbone(cfg, ds)
    head = build_run_head(cfg, model.feature_dim, ds.num_classes, steps_per_epoch(cfg, ds))

The unconstrained-features model (UFM) is the one setting with special rules, and they all live in
this file (see "UFM" below).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from ..heads import Head, build_head, head_options
from .config import TrainConfig
from .data import Dataset, DatasetLoader, TensorLoader, load_dataset
from .models import build_model

__all__ = [
    "ETF_METHODS", "data_fingerprint", "load_data", "build_backbone", "build_run_head", "head_kwargs", "make_loaders",
    "steps_per_epoch",
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
    return build_model(cfg.model, ds.input_shape, ds.num_classes, **kw)


def head_kwargs(cfg: TrainConfig, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The head options of ``cfg``: the config fields the method's head takes, then ``cfg.head_kwargs``.

    ``cfg.freeze_after`` (epochs) becomes the head's ``freeze_after = round(cfg.freeze_after × steps_per_epoch)``
    training updates; ``steps_per_epoch`` (:func:`steps_per_epoch`) is required when it is set."""
    fields = dict(temperature=cfg.temperature, delta=cfg.delta, solver=cfg.solver, seed=cfg.seed,
                  mean_schedule=cfg.mean_schedule, alpha_min=cfg.alpha_min, ema_alpha=cfg.ema_alpha)
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
        raise ValueError(
            f"method {cfg.method!r} needs feature_dim >= num_classes, got {feature_dim} < {num_classes}: widen the "
            f"model (e.g. a last layer of width >= {num_classes})"
        )
    return build_head(cfg.method, feature_dim, num_classes, **head_kwargs(cfg, steps_per_epoch))


def steps_per_epoch(cfg: TrainConfig, ds: Dataset, world: int = 1, batch_norm: bool = False) -> int:
    """Optimiser steps per epoch: the length of the training loader :func:`make_loaders` builds (global
    batches: the same on every rank)."""
    n = _num_train(ds)
    return n // cfg.batch_size if _drop_last(cfg, n, world, batch_norm) else -(-n // cfg.batch_size)


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

"""Evaluation of a model and head: loss and accuracy per split, and the NC metrics of the training split.

    rec = evaluate(model, head, {"train": train_loader, "test": test_loader})

Keys: ``{split}_loss`` (plain cross-entropy, no label smoothing) and ``{split}_acc`` for every loader
(``test_loss``/``test_acc`` are ``None`` without a ``"test"`` loader), then the metrics of
``ncguide.nc_metrics`` on the training split's ``h̃ = head.transform(model(x))`` with ``head.weight,
head.bias`` (docs/metrics.md). Model and head run in eval mode and get their modes back. Under
``torch.distributed`` each rank passes its shard and the sums are all-reduced, so every rank returns
the same record.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..metrics import nc_metrics_streaming

__all__ = ["evaluate"]

_CACHE_BYTES = 512 * 2**20  # the training features are kept for the 2nd NC pass up to this size


@torch.no_grad()
def evaluate(model: nn.Module, head: nn.Module, loaders: dict[str, Any], autocast=nullcontext) -> dict:
    """The evaluation record of ``model`` and ``head`` on ``loaders`` (see the module docstring)."""
    modes = model.training, head.training
    model.eval()
    head.eval()
    out: dict[str, Any] = {}
    nc: dict[str, float] = {}
    try:
        for split, loader in loaders.items():
            if split == "train":
                sums, nc = _train_split(model, head, loader, autocast)
            else:
                sums = sum(_loss_acc_sums(head(f), y) for f, y in _forward_batches(model, loader, autocast))
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(sums)
            loss_sum, correct, count = sums.tolist()
            out[f"{split}_loss"] = loss_sum / count
            out[f"{split}_acc"] = correct / count
        out.setdefault("test_loss", None)
        out.setdefault("test_acc", None)
        out.update(nc)
    finally:
        model.train(modes[0])
        head.train(modes[1])
    return out


def _forward_batches(model: nn.Module, loader, autocast):
    for x, y in loader:
        with autocast():
            f = model(x)
        yield f.float(), y


def _loss_acc_sums(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(cross-entropy sum, correct, count) in float64."""
    return torch.stack([F.cross_entropy(logits.double(), y, reduction="sum"), (logits.argmax(1) == y).sum().double(),
                        torch.full((), len(y), dtype=torch.float64, device=logits.device)])


def _train_split(model, head, loader, autocast) -> tuple[torch.Tensor, dict]:
    """Loss/accuracy sums and NC metrics of the training split. The 2nd NC pass reuses the first
    pass's features when they fit in ``_CACHE_BYTES``, else runs the backbone again."""
    state: dict[str, Any] = {"sums": 0, "cache": [], "bytes": 0}

    def first_pass():
        for f, y in _forward_batches(model, loader, autocast):
            state["sums"] = state["sums"] + _loss_acc_sums(head(f), y)
            h = head.transform(f)
            state["bytes"] += h.numel() * h.element_size()
            if state["cache"] is not None and state["bytes"] <= _CACHE_BYTES:
                state["cache"].append((h, y))
            else:
                state["cache"] = None
            yield h, y

    def second_pass():
        if state["cache"] is not None:
            return state["cache"]
        return ((head.transform(f), y) for f, y in _forward_batches(model, loader, autocast))

    passes = iter((first_pass, second_pass))
    nc = nc_metrics_streaming(lambda: next(passes)(), head.weight, head.bias, head.num_classes, head.feature_dim)
    nc.pop("accuracy", None)  # the same as train_acc
    return state["sums"], nc

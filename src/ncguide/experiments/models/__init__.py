"""Backbones. Every model maps an input batch to penultimate features ``h`` of shape
``(N, model.feature_dim)``; none contains a classifier layer (the head does that), so any head fits.

    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, width=0.25)
    head = build_head("nearest-etf", model.feature_dim, 10)
    logits = head(model(x), y)

Names (``MODELS``): ``ufm`` (free features indexed by sample id; needs ``num_samples``),
``mlp``, ``cnn`` (``cnn1d`` for ``(L,)``/``(C, L)`` inputs, else ``cnn2d``), ``cnn1d``, ``cnn2d``,
``resnet18``, ``resnet34``, ``resnet50``, ``vgg13``. ``num_classes`` is accepted by every builder
for uniformity and unused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from .cnn import CNN1d, CNN2d, build_cnn, build_cnn1d, build_cnn2d
from .mlp import MLP, build_mlp
from .resnet import ResNet, build_resnet18, build_resnet34, build_resnet50
from .ufm import UFM, build_ufm
from .vgg import VGG, build_vgg13

__all__ = ["MODELS", "build_model", "UFM", "MLP", "CNN1d", "CNN2d", "ResNet", "VGG"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "ufm": build_ufm,
    "mlp": build_mlp,
    "cnn": build_cnn,
    "cnn1d": build_cnn1d,
    "cnn2d": build_cnn2d,
    "resnet18": build_resnet18,
    "resnet34": build_resnet34,
    "resnet50": build_resnet50,
    "vgg13": build_vgg13,
}


def build_model(name: str, input_shape: tuple, num_classes: int, **kwargs) -> nn.Module:
    """Build backbone ``name`` for inputs of shape ``input_shape`` (without the batch axis).

    ``kwargs`` are the builder's options (e.g. ``width``, ``stem`` for ResNets; ``widths``,
    ``batch_norm``, ``bias`` for the MLP; ``num_samples``, ``feature_dim`` for the UFM).
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    builder = MODELS[key]
    options = [p for p in inspect.signature(builder).parameters.values() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - {p.name for p in options})
    if unknown:
        valid = ", ".join(p.name for p in options) or "none"
        raise ValueError(f"unknown option(s) {unknown} for model {key!r}; valid options: {valid}")
    return builder(tuple(input_shape), num_classes, **kwargs)

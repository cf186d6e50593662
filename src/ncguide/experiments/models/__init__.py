"""Backbones. Every model maps an input batch to penultimate features ``h`` of shape
``(N, model.feature_dim)``; none contains a classifier layer (the head does that), so any head fits.

    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, width=0.25)
    head = build_head("nearest-etf", model.feature_dim, 10)
    logits = head(model(x), y)

Names (``MODELS``): ``ufm`` (free features indexed by sample id; needs ``num_samples``),
``mlp``, ``cnn`` (``cnn1d`` for ``(L,)``/``(C, L)`` inputs, else ``cnn2d``), ``cnn1d``, ``cnn2d``,
``resnet18``, ``resnet34``, ``resnet50``, ``vgg13``. ``num_classes`` is accepted by every builder
for uniformity and unused.

``build_model(..., bias_free=True)`` (the paper's ``--no-bias`` networks, which automatic gradient
descent needs) removes every additive parameter from whichever model is built: the bias of each
``Linear``/``Conv`` layer and the affine scale and shift of each batch norm, which then only
standardises ``(x - E[x]) / sqrt(Var[x] + ε)``. What remains are the weight matrices and kernels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from .cnn import CNN1d, CNN2d, build_cnn, build_cnn1d, build_cnn2d
from .mlp import MLP, build_mlp
from .resnet import ResNet, build_resnet18, build_resnet34, build_resnet50
from .ufm import UFM, build_ufm
from .vgg import VGG, build_vgg13

__all__ = ["MODELS", "build_model", "make_bias_free", "UFM", "MLP", "CNN1d", "CNN2d", "ResNet", "VGG"]

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


def build_model(name: str, input_shape: tuple, num_classes: int, *, bias_free: bool = False, **kwargs) -> nn.Module:
    """Build backbone ``name`` for inputs of shape ``input_shape`` (without the batch axis).

    ``kwargs`` are the builder's options (e.g. ``width``, ``stem`` for ResNets; ``widths``,
    ``batch_norm``, ``bias`` for the MLP; ``num_samples``, ``feature_dim`` for the UFM).
    ``bias_free``: then :func:`make_bias_free` (whatever the builder's own ``bias`` option says).
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
    model = builder(tuple(input_shape), num_classes, **kwargs)
    return make_bias_free(model) if bias_free else model


@torch.no_grad()
def make_bias_free(model: nn.Module) -> nn.Module:
    """``model`` in place without additive parameters: ``Linear``/``Conv`` layers lose their bias, batch
    norms their affine ``γ``, ``β`` (``y = (x - μ)/sqrt(σ² + ε)``, running statistics kept). ``ValueError``
    if a parameter with fewer than 2 dimensions is left (a layer this function does not know)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight, m.bias, m.affine = None, None, False
        elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.bias is not None:
            m.bias = None
    left = [name for name, p in model.named_parameters() if p.dim() < 2]
    if left:
        raise ValueError(f"{type(model).__name__} cannot be made bias-free: parameter {left[0]!r} is not a weight "
                         "matrix or kernel")
    return model

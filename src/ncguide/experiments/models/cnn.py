"""Small convolutional backbones.

- ``CNN1d``: for MNIST-1D (input ``(N, 40)`` or ``(N, 1, 40)``). Three stride-2 conv layers with
  batch norm and ReLU (``L → L/2 → L/4 → L/8``), flatten (position matters in MNIST-1D, so no
  global pooling), then ``Linear → BN → ReLU`` to ``feature_dim``. About 108k parameters at the
  defaults (64 channels, ``feature_dim=256``). With Adam (1e-3, batch 128) and a row-normalised
  linear head on ``5·h/‖h‖`` it reached 99% training accuracy on MNIST-1D (4000 samples) in 10-12
  epochs (3 seeds), ~4 s for 30 epochs on two CPU cores; 32 channels took 21-22 epochs.
- ``CNN2d``: for 28×28 grey / 32×32 RGB images. Blocks ``Conv3×3 → BN → ReLU → MaxPool2``, global
  average pooling, then ``Linear → BN → ReLU`` to ``feature_dim``.

Features are post-ReLU activations, as in every other backbone here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CNN1d", "CNN2d", "build_cnn", "build_cnn1d", "build_cnn2d", "image_shape"]


def image_shape(input_shape: tuple) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``(C, H, W)`` or ``(H, W)`` (grey, one channel)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image models need input_shape (C, H, W) or (H, W); got {tuple(input_shape)}")
    return shape


def _conv_bn_relu(conv: nn.Module, channels: int, bn: type[nn.Module]) -> list[nn.Module]:
    return [conv, bn(channels), nn.ReLU(inplace=True)]


class CNN1d(nn.Module):
    """``h = ReLU(BN(W · flatten(conv₃(conv₂(conv₁(x)))))``, each ``convᵢ`` = Conv1d(stride 2) → BN → ReLU."""

    def __init__(self, in_channels: int = 1, length: int = 40, channels: int = 64, feature_dim: int = 256):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        prev = in_channels
        for kernel in (5, 3, 3):
            conv = nn.Conv1d(prev, channels, kernel, stride=2, padding=kernel // 2, bias=False)
            layers += _conv_bn_relu(conv, channels, nn.BatchNorm1d)
            length = (length + 2 * (kernel // 2) - kernel) // 2 + 1
            prev = channels
        if length < 1:
            raise ValueError("CNN1d input is too short for three stride-2 convolutions; use length >= 1")
        layers += [nn.Flatten(), nn.Linear(channels * length, feature_dim, bias=False)]
        layers += [nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.in_channels == 1:  # (N, L) → (N, 1, L)
            x = x.unsqueeze(1)
        return self.net(x)


class CNN2d(nn.Module):
    """``h = ReLU(BN(W · avgpool(block_B(··· block_1(x)))))``, block = Conv3×3 → BN → ReLU → MaxPool2."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128), feature_dim: int = 256):
        super().__init__()
        if not channels:
            raise ValueError("CNN2d needs at least one conv block; pass channels=(32, 64, 128) or similar")
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            conv = nn.Conv2d(prev, ch, 3, padding=1, bias=False)
            layers += [*_conv_bn_relu(conv, ch, nn.BatchNorm2d), nn.MaxPool2d(2, ceil_mode=True)]
            prev = ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, feature_dim, bias=False)]
        layers += [nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_cnn1d(
    input_shape: tuple = (40,), num_classes: int | None = None, *, channels: int = 64, feature_dim: int = 256
) -> CNN1d:
    """1-D CNN for inputs of shape ``(L,)`` or ``(C, L)``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        shape = (1, *shape)
    if len(shape) != 2:
        raise ValueError(f"cnn1d needs input_shape (L,) or (C, L); got {tuple(input_shape)}")
    return CNN1d(shape[0], shape[1], channels=channels, feature_dim=feature_dim)


def build_cnn2d(
    input_shape: tuple = (3, 32, 32),
    num_classes: int | None = None,
    *,
    channels: Sequence[int] = (32, 64, 128),
    feature_dim: int = 256,
) -> CNN2d:
    """2-D CNN for images of shape ``(C, H, W)`` or ``(H, W)``."""
    return CNN2d(image_shape(input_shape)[0], channels=channels, feature_dim=feature_dim)


def build_cnn(
    input_shape: tuple,
    num_classes: int | None = None,
    *,
    channels: int | Sequence[int] | None = None,
    feature_dim: int | None = None,
) -> nn.Module:
    """``cnn1d`` for ``(L,)``/``(C, L)`` inputs, ``cnn2d`` for ``(C, H, W)`` inputs (their defaults for ``None``)."""
    kwargs = {k: v for k, v in (("channels", channels), ("feature_dim", feature_dim)) if v is not None}
    if len(input_shape) <= 2:
        return build_cnn1d(input_shape, num_classes, **kwargs)
    return build_cnn2d(input_shape, num_classes, **kwargs)

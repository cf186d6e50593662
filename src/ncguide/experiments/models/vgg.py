"""VGG-13 with batch norm (Simonyan & Zisserman 2015), as a feature extractor.

Conv stages (each conv is 3×3 → BN → ReLU, ``M`` = MaxPool2×2):
``64 64 M 128 128 M 256 256 M 512 512 M 512 512 M``.

Two styles, chosen from the input size by default (``min(H, W) <= 64`` → cifar):
- ``"cifar"``: conv stages → global average pool → flatten, ``feature_dim = 512``
  (at 32×32 the map is already 1×1, so the pool is a plain flatten);
- ``"imagenet"``: torchvision's layout: conv stages → AdaptiveAvgPool(7×7) → flatten →
  ``Linear(25088, 4096) → ReLU → Dropout → Linear(4096, 4096) → ReLU → Dropout``,
  ``feature_dim = 4096`` (torchvision's ``vgg13_bn`` minus its last Linear).
Inputs must be at least 32 px on each side (five 2× poolings).
"""

from __future__ import annotations

import torch
from torch import nn

from .cnn import image_shape

__all__ = ["VGG", "VGG13_CONFIG", "build_vgg13"]

VGG13_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, config=VGG13_CONFIG, in_channels: int = 3, style: str = "cifar", dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                prev = v
        self.features = nn.Sequential(*layers)
        if style == "cifar":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.feature_dim = prev
        elif style == "imagenet":
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                nn.Linear(prev * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            )  # fmt: skip
            self.feature_dim = 4096
        else:
            raise ValueError(f"unknown VGG style {style!r}; use 'cifar' or 'imagenet'")
        self.style = style
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_vgg13(
    input_shape: tuple = (3, 32, 32), num_classes: int | None = None, *, style: str | None = None, dropout: float = 0.5
) -> VGG:
    """VGG-13-BN trunk; ``feature_dim`` 512 (cifar style) or 4096 (imagenet style)."""
    c, h, w = image_shape(input_shape)
    if min(h, w) < 32:
        raise ValueError(f"vgg13 needs inputs of at least 32×32 (five 2× poolings); got {h}×{w}")
    if style is None:
        style = "cifar" if min(h, w) <= 64 else "imagenet"
    return VGG(VGG13_CONFIG, in_channels=c, style=style, dropout=dropout)

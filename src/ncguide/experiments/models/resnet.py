"""ResNet-18/34/50 trunks (He et al. 2016) returning the globally pooled penultimate features.

Two stems:
- ``"cifar"``: Conv3×3 stride 1 → BN → ReLU, no max-pool (small images keep their resolution);
- ``"imagenet"``: Conv7×7 stride 2 → BN → ReLU → MaxPool3×3 stride 2 (torchvision layout).
The default is chosen from the input size: ``min(H, W) <= 64`` → cifar, else imagenet.

``width`` scales every stage: base width ``b = round(64·width)``, stage widths ``b, 2b, 4b, 8b``,
``feature_dim = 8b·expansion`` (512 for ResNet-18/34, 2048 for ResNet-50 at ``width=1``).
Bottlenecks put the stride on the 3×3 conv (torchvision's "ResNet v1.5"). With ``width=1`` and the
imagenet stem the parameter count equals torchvision's model minus its ``fc`` layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .cnn import image_shape

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "build_resnet18", "build_resnet34", "build_resnet50"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity, or Conv1×1(stride) → BN where the shape changes."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    """``ReLU(BN(conv3×3(ReLU(BN(conv3×3(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.residual = nn.Sequential(
            *_conv_bn(c_in, planes, 3, stride), nn.ReLU(inplace=True), *_conv_bn(planes, c_out, 3)
        )
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """``ReLU(BN(conv1×1(ReLU(BN(conv3×3(ReLU(BN(conv1×1(x)))))))) + shortcut(x))``, 4× expansion."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.residual = nn.Sequential(
            *_conv_bn(c_in, planes, 1), nn.ReLU(inplace=True),
            *_conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(planes, c_out, 1),
        )  # fmt: skip
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        in_channels: int = 3,
        stem: str = "cifar",
        width: float = 1.0,
    ):
        super().__init__()
        base = max(1, round(64 * width))
        if stem == "cifar":
            self.stem = nn.Sequential(*_conv_bn(in_channels, base, 3), nn.ReLU(inplace=True))
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                *_conv_bn(in_channels, base, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1)
            )
        else:
            raise ValueError(f"unknown ResNet stem {stem!r}; use 'cifar' or 'imagenet'")
        stages, c_in = [], base
        for i, depth in enumerate(depths):
            planes = base * 2**i
            for j in range(depth):
                stages.append(block(c_in, planes, stride=2 if (i > 0 and j == 0) else 1))
                c_in = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c_in
        self.stem_name = stem
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


def _build(block, depths, input_shape, stem, width) -> ResNet:
    c, h, w = image_shape(input_shape)
    if stem is None:
        stem = "cifar" if min(h, w) <= 64 else "imagenet"
    return ResNet(block, depths, in_channels=c, stem=stem, width=width)


def build_resnet18(
    input_shape: tuple = (3, 32, 32), num_classes: int | None = None, *, stem: str | None = None, width: float = 1.0
) -> ResNet:
    """ResNet-18 trunk, ``feature_dim = 512·width``."""
    return _build(BasicBlock, (2, 2, 2, 2), input_shape, stem, width)


def build_resnet34(
    input_shape: tuple = (3, 32, 32), num_classes: int | None = None, *, stem: str | None = None, width: float = 1.0
) -> ResNet:
    """ResNet-34 trunk, ``feature_dim = 512·width``."""
    return _build(BasicBlock, (3, 4, 6, 3), input_shape, stem, width)


def build_resnet50(
    input_shape: tuple = (3, 32, 32), num_classes: int | None = None, *, stem: str | None = None, width: float = 1.0
) -> ResNet:
    """ResNet-50 trunk, ``feature_dim = 2048·width``."""
    return _build(Bottleneck, (3, 4, 6, 3), input_shape, stem, width)

"""Multi-layer perceptron backbone.

``h = ReLU(BN(W_L ··· ReLU(BN(W_1 x + b_1)) ··· + b_L))`` on the flattened input; the features are
the last hidden layer's activations (``feature_dim = widths[-1]``).

``bias=False`` drops the Linear biases; with ``batch_norm=False`` as well the network has no
additive parameters at all, i.e. it is positively homogeneous, ``f(c·x) = c·f(x)`` for ``c > 0``
(the form automatic gradient descent, AGD, assumes). Batch norm keeps its own affine shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

__all__ = ["MLP", "build_mlp"]


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        widths: Sequence[int] = (512, 512, 512),
        batch_norm: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"MLP widths must be a non-empty list of positive ints; got {widths}")
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in widths:
            layers.append(nn.Linear(prev, width, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            prev = width
        self.net = nn.Sequential(*layers)
        self.feature_dim = widths[-1]

    def forward(self, x):
        return self.net(x)


def build_mlp(
    input_shape: tuple,
    num_classes: int | None = None,
    *,
    widths: Sequence[int] = (512, 512, 512),
    batch_norm: bool = True,
    bias: bool = True,
) -> MLP:
    """MLP on inputs of shape ``input_shape`` (flattened: ``prod(input_shape)`` input features)."""
    return MLP(math.prod(input_shape), widths, batch_norm=batch_norm, bias=bias)

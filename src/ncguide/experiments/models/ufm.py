"""Unconstrained-feature model (UFM).

The backbone is idealised away: the feature of training sample ``i`` is a free parameter
``h_i = H[i]`` (``H`` is ``N×d``), optimised directly together with the head, as in the
neural-collapse literature (Mixon et al. 2020; Zhu et al. 2021). Its input is therefore the sample
*index* (a LongTensor), not the sample.

Evaluation on a test set is not meaningful: a test index names no learned feature. Indices outside
``[0, num_samples)`` raise ``ValueError`` rather than silently reading another sample's row.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UFM", "build_ufm"]


class UFM(nn.Module):
    """``forward(i) = H[i]`` with ``H ~ N(0, init_std²)`` of shape ``(num_samples, feature_dim)``."""

    def __init__(self, num_samples: int, feature_dim: int, init_std: float = 0.1):
        super().__init__()
        if num_samples < 1 or feature_dim < 1:
            raise ValueError(f"UFM needs num_samples >= 1 and feature_dim >= 1; got {num_samples}, {feature_dim}")
        self.num_samples = num_samples
        self.feature_dim = feature_dim
        self.features = nn.Parameter(init_std * torch.randn(num_samples, feature_dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ValueError(f"UFM input must be integer sample indices (LongTensor); got dtype {idx.dtype}")
        if idx.dim() == 2 and idx.shape[1] == 1:  # (N, 1) index columns are accepted too
            idx = idx[:, 0]
        if idx.dim() != 1:
            raise ValueError(f"UFM input must be a 1-D tensor of sample indices; got shape {tuple(idx.shape)}")
        if idx.numel() > 0 and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ValueError(
                f"UFM indices must lie in [0, {self.num_samples}); got range [{int(idx.min())}, {int(idx.max())}]"
                " (a UFM has features for training samples only; test-set evaluation is not meaningful)"
            )
        return self.features[idx]

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, feature_dim={self.feature_dim}"


def build_ufm(
    input_shape: tuple = (),
    num_classes: int | None = None,
    *,
    num_samples: int | None = None,
    feature_dim: int = 512,
    init_std: float = 0.1,
) -> UFM:
    """UFM with one free ``feature_dim``-vector per training sample (``num_samples`` is required)."""
    if num_samples is None:
        raise ValueError("the ufm model needs num_samples=N (the number of training samples)")
    return UFM(num_samples, feature_dim, init_std=init_std)

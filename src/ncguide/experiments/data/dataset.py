"""The ``Dataset`` record and the operations ``load_dataset`` applies to every data set.

- balanced subsets: ``n`` samples of every class, drawn by a seeded ``torch.Generator``;
- stratified train/test split (for sets that ship without one, e.g. ``digits``);
- per-channel normalisation ``x ← (x - μ_c) / σ_c`` with ``μ_c, σ_c`` computed on the training
  split only (the split actually used, i.e. after subsetting), applied to both splits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

__all__ = ["Dataset", "cache_dir", "balanced_subset", "stratified_split", "channel_stats", "normalize"]


@dataclass
class Dataset:
    """A classification data set, ready for training.

    ``x_*`` are float tensors ``(N, *input_shape)`` (sample indices, a LongTensor ``(N,)``, for
    ``ufm``), ``y_*`` int64 labels in ``0..num_classes-1``. ``mean``/``std`` are the per-channel
    statistics the inputs were normalised with (``None`` when not normalised).

    Lazy sets (``imagenet``) leave ``x_*``/``y_*`` as ``None`` and give ``train_set``/``test_set``
    instead: ``torch.utils.data.Dataset`` objects yielding ``(image, label)``, for a ``DataLoader``.
    """

    name: str
    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    input_shape: tuple[int, ...]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    train_set: torch.utils.data.Dataset | None = None
    test_set: torch.utils.data.Dataset | None = None
    meta: dict = field(default_factory=dict)

    @property
    def is_lazy(self) -> bool:
        return self.x_train is None

    def __repr__(self) -> str:
        if self.is_lazy:
            sizes = f"train={len(self.train_set)}, test={len(self.test_set)}"
        else:
            sizes = f"train={len(self.y_train)}, test={len(self.y_test)}"
        return (
            f"Dataset(name={self.name!r}, {sizes}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape})"
        )


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$NCGUIDE_CACHE``, else ``~/.cache/ncguide``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("NCGUIDE_CACHE") or Path.home() / ".cache" / "ncguide").expanduser()


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded by mixing the integers ``seeds`` (distinct tuples, distinct streams)."""
    import numpy as np

    state = np.random.SeedSequence([int(s) % 2**63 for s in seeds]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def balanced_subset(
    labels: torch.Tensor, per_class: int, generator: torch.Generator, num_classes: int | None = None
) -> torch.Tensor:
    """Indices of ``per_class`` samples of every class, chosen uniformly at random, sorted ascending."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = labels.cpu()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(
                f"class {c} has only {len(idx)} samples, fewer than the {per_class} per class requested; "
                f"ask for at most {len(idx)} per class"
            )
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def stratified_split(
    labels: torch.Tensor, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: ``round(test_fraction · n_c)`` of every class ``c`` go to test."""
    train, test = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def channel_stats(x: torch.Tensor, chunk: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std over all axes but axis 1; one channel for 2-D ``x``.

    One pass over chunks of about ``chunk`` values, float64 sums of ``x - s`` and ``(x - s)²``
    shifted by the first sample's channel means ``s`` (no cancellation, no float64 copy of the set).
    """
    x = x.reshape(len(x), 1, -1) if x.dim() == 2 else x.reshape(len(x), x.shape[1], -1)
    shift = x[0].double().mean(dim=1)
    step = max(1, chunk // max(1, x[0].numel()))
    total = torch.zeros_like(shift)
    total_sq = torch.zeros_like(shift)
    for i in range(0, len(x), step):
        part = x[i : i + step].double() - shift[:, None]
        total += part.sum(dim=(0, 2))
        total_sq += part.square().sum(dim=(0, 2))
    count = x.shape[0] * x.shape[2]
    mean = total / count
    return shift + mean, (total_sq / count - mean.square()).clamp_min(0).sqrt()


def normalize(ds: Dataset, eps: float = 1e-8) -> Dataset:
    """``x ← (x - μ_c)/σ_c`` per channel, ``μ, σ`` from ``ds.x_train`` (a constant channel keeps ``σ = 1``)."""
    mean, std = channel_stats(ds.x_train)
    std = torch.where(std > eps, std, torch.ones_like(std))
    shape = (1, -1) + (1,) * (ds.x_train.dim() - 2) if ds.x_train.dim() > 2 else (1, 1)
    mean, std = mean.float().view(shape), std.float().view(shape)
    return replace(
        ds,
        x_train=torch.sub(ds.x_train, mean).div_(std),
        x_test=torch.sub(ds.x_test, mean).div_(std),
        mean=mean.flatten(),
        std=std.flatten(),
    )

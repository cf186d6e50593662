"""Batches from in-memory tensors: plain or stratified order, DDP sharding, exact resume, on-device augmentation.

**Order of an epoch.** Drawn from a ``torch.Generator`` seeded by ``(seed, epoch)`` only, so it is
the same on every rank and after a restart. ``shuffle=False``: ``0..N-1`` in order; plain
shuffle: a random permutation; ``stratified=True``: :func:`stratified_batches`.

**Stratified batches** (the paper draws every class into every batch). With ``N`` samples, ``n_c``
of class ``c`` and ``B`` per batch, batch ``b`` of size ``s_b`` holds

    q_bc ∈ {⌊n_c s_b / N⌋, ⌈n_c s_b / N⌉}  samples of class c,     Σ_c q_bc = s_b,   Σ_b q_bc = n_c,

(a controlled rounding of the proportional shares), so one epoch still visits every sample exactly
once, and class ``c`` is in every batch whose share ``n_c s_b/N`` is at least 1: with balanced
classes and ``B >= K`` every full batch holds every class; with ``B < K`` a batch holds ``B``
distinct classes; imbalanced classes get their proportional share in every batch (a class with at
least as many samples as there are batches is in every full batch).

**DDP.** ``batch_size`` is the *global* batch. Rank ``r`` of ``world_size`` gets the ``r``-th of
``world_size`` contiguous, near-equal slices of each global batch (``torch.tensor_split``); every
rank sees the same number of batches. A final batch smaller than ``world_size`` leaves some ranks
an empty slice; use ``drop_last=True`` for training under DDP.

**Resume.** ``state_dict()`` records ``(epoch, position)`` (global batches already handed out in
that epoch); a loader given that state continues with the identical sequence of batches, the
augmentation included. A completed pass moves to the next epoch; ``set_epoch(e)`` jumps to epoch ``e``
(and is a no-op when already there, so calling it after ``load_state_dict`` keeps the position).
Only one iteration over a loader may be in progress at a time.

**Augmentation** (``augment="crop-flip"``: random crop of the zero-padded image, padding 4, and
horizontal flip with probability 1/2; ``"flip"``: flip only) runs on the tensors' device, for the
whole batch at once, with parameters drawn from a generator seeded by ``(seed, epoch, batch)``:
the same image in the same batch gets the same crop whatever the number of ranks. Padding is 0 in
the (normalised) input space. A callable ``augment(x, generator) -> x`` is accepted too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from .dataset import seeded_generator

__all__ = ["TensorLoader", "DatasetLoader", "stratified_batches", "crop_flip", "random_crop_flip"]

AUGMENTATIONS = ("crop-flip", "flip")


def stratified_batches(
    labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """A random partition of ``0..N-1`` into ``⌈N/B⌉`` batches (sizes ``B, ..., B, N mod B``) with class
    counts ``q_bc ∈ {⌊n_c s_b/N⌋, ⌈n_c s_b/N⌉}`` (see the module docstring).

    Construction: every batch starts at the floors. The fractional parts of a full batch's shares
    are identical across full batches, and the leftover count of class ``c`` is at most the number
    of full batches, so the leftovers (after the short batch takes its own, chosen at random among
    its fractional shares) are dealt cyclically over the full batches, classes in random order:
    each full batch gets the same number of extra samples and at most one extra per class.
    """
    labels = labels.cpu().long()
    n, g = len(labels), generator
    counts = torch.bincount(labels)
    num_classes = len(counts)
    num_full, last = divmod(n, batch_size)
    sizes = [batch_size] * num_full + ([last] if last else [])
    quota = torch.zeros(len(sizes), num_classes, dtype=torch.long)
    left = counts.clone()
    if last:
        quota[-1] = counts * last // n
        frac = counts * last % n
        extra = last - int(quota[-1].sum())
        if extra:
            pick = torch.multinomial(frac.double(), extra, replacement=False, generator=g)
            quota[-1, pick] += 1
        left -= quota[-1]
    if num_full:
        floor = counts * batch_size // n
        quota[:num_full] = floor
        left -= num_full * floor
        classes = torch.randperm(num_classes, generator=g)
        cols = torch.repeat_interleave(classes, left[classes])
        rows = torch.arange(len(cols)) % num_full
        quota[rows, cols] += 1  # (row, col) pairs are distinct: left[c] <= num_full
        quota[:num_full] = quota[torch.randperm(num_full, generator=g)]
    # samples grouped by class in random order within a class, then dealt to batches by quota
    by_class = torch.argsort(labels.double() + torch.rand(n, generator=g, dtype=torch.float64))
    batch_of = torch.repeat_interleave(torch.arange(len(sizes)).repeat(num_classes), quota.t().flatten())
    order = by_class[torch.argsort(batch_of.double() + torch.rand(n, generator=g, dtype=torch.float64))]
    return list(order.split(sizes))


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """``out[i] = flip_i(pad(x[i])[:, oy_i : oy_i+H, ox_i : ox_i+W])`` for a batch ``(N, C, H, W)``, one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = offsets[:, :1] + ar_h  # (N, H)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, crop: bool = True
) -> torch.Tensor:
    """Random crop (offsets uniform in ``0..2·pad``) of the padded batch and a coin-flip mirror.

    The parameters are drawn from ``generator``; ``crop=False`` flips only.
    """
    offsets, flips = _crop_flip_params(len(x), generator, pad, crop)
    return crop_flip(x, offsets, flips, pad)


def _crop_flip_params(
    n: int, generator: torch.Generator, pad: int, crop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    if not crop:
        offsets.fill_(pad)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


class _EpochLoader:
    """Epoch/position bookkeeping shared by the loaders: ``len`` = global batches per epoch,
    ``set_epoch`` jumps to the start of an epoch (a no-op when already in it)."""

    batch_size: int
    drop_last: bool
    epoch: int
    position: int

    def _num_samples(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch`` (no-op if already in it, keeping the position)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0


class TensorLoader(_EpochLoader):
    """Iterable of ``(x, y)`` batches from tensors kept on ``device`` (see the module docstring)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        stratified: bool = False,
        seed: int = 0,
        augment: str | Callable | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: int = 4,
    ):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(x):
            raise ValueError(
                f"batch_size {batch_size} > {len(x)} samples with drop_last=True leaves no batch"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if stratified and not shuffle:
            raise ValueError("stratified batches are drawn at random; use shuffle=True with stratified=True")
        if stratified and y.dim() != 1:
            raise ValueError(f"stratified batches need 1-D integer labels, got shape {tuple(y.shape)}")
        if augment is not None and not callable(augment) and augment not in AUGMENTATIONS:
            raise ValueError(
                f"unknown augment {augment!r}; use None, {', '.join(AUGMENTATIONS)} or a callable"
            )
        if isinstance(augment, str) and x.dim() != 4:
            raise ValueError(f"augment={augment!r} needs images (N, C, H, W), got shape {tuple(x.shape)}")
        self.x = x if device is None else x.to(device)
        self.y = y if device is None else y.to(device)
        self.batch_size, self.shuffle, self.stratified = batch_size, shuffle, stratified
        self.seed, self.augment, self.drop_last, self.pad = seed, augment, drop_last, pad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._plan_cache: tuple[int, list[torch.Tensor]] | None = None
        self._y_cpu: torch.Tensor | None = None

    def _num_samples(self) -> int:
        return len(self.x)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_samples": len(self.x),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "num_samples"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(
                    f"loader state has {key}={state[key]} but this loader has {mine}; resume with the same {key}"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def plan(self, epoch: int) -> list[torch.Tensor]:
        """The global batches (CPU index tensors) of ``epoch``."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        n, g = len(self.x), seeded_generator(self.seed, epoch, 0)
        if self.stratified:
            if self._y_cpu is None:
                self._y_cpu = self.y.cpu()
            batches = stratified_batches(self._y_cpu, self.batch_size, g)
        else:
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            batches = list(order.split(self.batch_size))
        batches = batches[: len(self)]  # drop_last drops the short final batch
        self._plan_cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.position >= len(self):  # state saved after the last batch of an epoch
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.plan(self.epoch)
        while self.position < len(batches):
            i = self.position
            self.position += 1
            yield self._batch(batches[i], i)
        self.epoch, self.position = self.epoch + 1, 0

    def _batch(self, idx: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, r = divmod(len(idx), self.world_size)  # the rank-th slice of torch.tensor_split
        lo = self.rank * q + min(self.rank, r)
        hi = lo + q + (self.rank < r)
        mine = idx[lo:hi].to(self.x.device)
        x, y = self.x[mine], self.y[mine]
        if self.augment is None:
            return x, y
        g = seeded_generator(self.seed, self.epoch, i, 1)
        if callable(self.augment):
            return self.augment(x, g), y
        offsets, flips = _crop_flip_params(len(idx), g, self.pad, crop=self.augment == "crop-flip")
        return crop_flip(x, offsets[lo:hi], flips[lo:hi], self.pad), y


class DatasetLoader(_EpochLoader):
    """``TensorLoader``'s interface over a map-style ``torch.utils.data.Dataset`` (file-backed sets,
    e.g. ``imagenet``): the same epoch order (a permutation seeded by ``(seed, epoch)``), rank slices of
    each global batch, ``state_dict`` = ``(epoch, position)``; samples are read by a ``DataLoader``
    with ``num_workers`` processes. Its random transforms draw from worker seeds fixed by
    ``(seed, epoch, position)``, so a resume at an epoch boundary replays them, a mid-epoch one not."""

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 device=None, rank: int = 0, world_size: int = 1, num_workers: int = 0):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.device, self.rank, self.world_size = drop_last, device, rank, world_size
        self.num_workers = num_workers
        self.epoch = self.position = 0

    def _num_samples(self) -> int:
        return len(self.dataset)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != len(self.dataset):
            raise ValueError(f"loader state is for {state['num_samples']} samples, this data set has "
                             f"{len(self.dataset)}; resume with the same data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        n = len(self.dataset)
        order = torch.randperm(n, generator=seeded_generator(self.seed, self.epoch, 0)) if self.shuffle \
            else torch.arange(n)
        batches = list(order.split(self.batch_size))[self.position : len(self)]
        mine = [b.tensor_split(self.world_size)[self.rank].tolist() for b in batches]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=mine, num_workers=self.num_workers,
            pin_memory=torch.device(self.device or "cpu").type == "cuda",
            generator=seeded_generator(self.seed, self.epoch, self.position, 3),
        )
        for x, y in loader:
            self.position += 1
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.epoch, self.position = self.epoch + 1, 0

"""Optimisers and learning-rate schedules for the training loop.

``build_optimizer`` gives SGD (momentum, Nesterov), Adam, AdamW or AGD; ``lr_factor`` is the
schedule as a pure function of the step (the loop sets ``lr = base_lr · lr_factor(step, ...)``
before every optimiser step, so a resumed run only needs the step count).

Schedules (``s`` = index of the step about to be taken, ``S`` = total steps, ``w`` = warm-up steps):

    warm-up   (s < w):   f = (s + 1) / w                                  (linear, never 0)
    constant:            f = 1
    step:                f = γ^{#{m ∈ milestones : s >= m}}               (milestones in steps)
    cosine:              f = ½ (1 + cos(π · min(1, (s - w) / (S - w))))

AGD — automatic gradient descent (Bernstein, Mingard, Huang, Azizan, Yue 2023, arXiv 2304.05187,
Algorithm 1), for a depth-``L`` network of weight matrices ``W_l`` of shape ``n_l × n_{l-1}``
with no biases:

    init:    W_l ← s_l · (uniformly random semi-orthogonal n_l × n_{l-1}),  s_l = sqrt(n_l / n_{l-1})
                                                                     (agd_init_, called by the training loop)
    step:    G  = (1/L) Σ_l s_l ‖∇_{W_l} ℒ‖_F                                (gradient summary)
             η  = log((1 + sqrt(1 + 4G)) / 2)                                  (automatic step size)
             W_l ← W_l - g · (η / L) · s_l · ∇_{W_l} ℒ / ‖∇_{W_l} ℒ‖_F          (g = gain)

so every layer moves by the same relative amount in the spectral norm: ``‖ΔW_l‖_* <= ‖ΔW_l‖_F
= g·(η/L)·s_l = g·(η/L)·‖W_l‖_*`` at initialisation. The derivation assumes a bias-free,
positively homogeneous MLP; this implementation therefore accepts only weight matrices (``Linear``,
2-D) and kernels (``Conv1d``/``Conv2d``, 3-D/4-D) and raises ``ValueError`` for anything else
(biases, batch/layer norm parameters). A kernel ``(n_out, n_in, *k)`` is treated as ``T = prod(k)``
matrices, one per kernel tap, each with scale ``s = sqrt(n_out/n_in) / sqrt(T)`` and its own
Frobenius norm in ``G`` and in the update (the paper's code does this for 4-D kernels; 3-D ones, which
it never meets, get the same rule here). AGD takes no learning rate, momentum or weight decay; its
``lr`` (``gain`` ``g``) is what the schedules multiply.

The gain: Algorithm 1 has none (``g = 1``, the default of ``agd_gain``); the public code of the
guiding-neural-collapse paper trains every method with ``g = 10`` and no schedule, from this
initialisation, with the same update and the same per-tap treatment of kernels, ``L`` counting the
weight tensors the optimiser is given (docs/paper-protocol.md). Its networks are built bias-free for
it (``TrainConfig.bias_free``): AGD has no rule for a bias or a batch-norm scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["AGD", "agd_init_", "agd_scale", "build_optimizer", "lr_factor", "set_lr", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adam", "adamw", "agd")
SCHEDULES = ("constant", "step", "cosine")


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str = "constant",
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate for step ``step`` (0-based); see the module docstring."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's ``lr = initial_lr · factor``; returns group 0's new lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------------------- AGD


def agd_scale(shape: torch.Size | Sequence[int]) -> float:
    """Target spectral norm ``s = sqrt(n_out/n_in)`` of a 2-D weight (÷ sqrt(T) per tap for a kernel of T taps)."""
    return math.sqrt(shape[0] / shape[1]) / math.sqrt(math.prod(shape[2:]))


def _check_agd_param(p: torch.Tensor, name: str) -> None:
    if p.dim() < 2:
        raise ValueError(
            f"AGD supports bias-free MLP/conv nets only: parameter {name!r} has shape {tuple(p.shape)} "
            "(biases and batch/layer-norm parameters are not supported: set bias_free=true, which removes the "
            "biases and batch norm's affine parameters, or use another optimizer)"
        )


@torch.no_grad()
def agd_init_(params: Iterable[torch.Tensor]) -> None:
    """AGD initialisation in place: ``W = s · semi-orthogonal`` (per kernel tap for conv weights)."""
    for i, p in enumerate(params):
        _check_agd_param(p, f"#{i}")
        taps = torch.empty(p.shape[0], p.shape[1], math.prod(p.shape[2:]), dtype=p.dtype, device=p.device)
        for k in range(taps.shape[2]):
            nn.init.orthogonal_(taps[:, :, k])
        p.copy_(taps.reshape(p.shape) * agd_scale(p.shape))


def _tap_norms(g: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each kernel tap of a gradient (one for a matrix), shaped to broadcast against it."""
    n = g.reshape(g.shape[0], g.shape[1], -1).norm(dim=(0, 1))
    return n.reshape((1, 1) + g.shape[2:]) if g.dim() > 2 else n.reshape(())


class AGD(torch.optim.Optimizer):
    """Automatic gradient descent (see the module docstring for the update).

    ``AGD(params, lr=1.0)``: ``lr`` is the gain ``g`` (1 in Algorithm 1, 10 in the guiding-NC code). Like
    every torch optimiser it leaves the parameters alone when constructed; Algorithm 1 starts from
    :func:`agd_init_`, which the caller applies (the training loop does, for ``optimizer="agd"``). The
    depth ``L`` is the number of weight tensors. ``step()`` returns ``η`` as a 0-d tensor.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1.0):
        params = list(params)
        if not params:
            raise ValueError("AGD got no parameters")
        for i, p in enumerate(params):
            _check_agd_param(p, f"#{i}")
        super().__init__(params, dict(lr=lr))
        self.depth = len(params)

    @torch.no_grad()
    def step(self, closure=None) -> torch.Tensor | None:  # type: ignore[override]
        if closure is not None:
            with torch.enable_grad():
                closure()
        params = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return None
        norms = [_tap_norms(p.grad) for _, p in params]
        G = sum(agd_scale(p.shape) * n.sum() for (_, p), n in zip(params, norms)) / self.depth
        eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
        for (group, p), n in zip(params, norms):
            scale = group["lr"] * agd_scale(p.shape) / self.depth
            p.sub_(scale * eta * p.grad / n.clamp_min(torch.finfo(n.dtype).tiny))
        return eta


# ---------------------------------------------------------------------------------------- builders


def build_optimizer(
    name: str,
    named_params: Iterable[tuple[str, torch.Tensor]],
    lr: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Optimizer ``name`` (sgd | adam | adamw | agd) over the trainable ``named_params``.

    For ``agd``, ``lr`` is the gain, and a parameter that is not a weight matrix or kernel or a nonzero
    ``weight_decay`` raise ``ValueError``; the weights are not touched (apply :func:`agd_init_` first).
    Every group gets ``initial_lr = lr`` (the base of :func:`set_lr`).
    """
    named = [(n, p) for n, p in named_params if p.requires_grad]
    params = [p for _, p in named]
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    elif name == "agd":
        if weight_decay:
            raise ValueError(f"optimizer 'agd' takes no weight decay (got {weight_decay}); set weight_decay=0")
        for n, p in named:
            _check_agd_param(p, n)
        opt = AGD(params, lr=lr)
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    for group in opt.param_groups:
        group["initial_lr"] = lr
    return opt

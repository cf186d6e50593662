"""Running class-mean estimate fed to the nearest-ETF solve (docs/maths.md §2).

Each training batch gives ``B_t`` (``d×K``): column ``c`` is the mean of ``h̃`` over the batch's
class-``c`` samples minus the batch's global mean ``μ_B``. The running estimate is

    A_t[:, c] = (1 - α_{t,c}) A_{t-1}[:, c].detach() + α_{t,c} B_t[:, c]     (c present in the batch)
    A_t[:, c] = A_{t-1}[:, c]                                                 (c absent: unchanged)

so gradient reaches the features through the current batch term ``α B_t`` only. Schedules
(``t`` = number of batches in which class ``c`` has been present, this one included; it equals the
global step when every batch holds every class, the paper's setting):

    "paper"       α = max(2/(t+1), α_min)                     (α_min = 1e-4)
    "cumulative"  α = n_{t,c} / Σ_{s<=t} n_{s,c}              (plain sample-weighted mean of the B_s)
    "ema"         α = ema_alpha (fixed), except α = 1 the first time a class is seen

Every schedule has ``α = 1`` at a class's first batch, so the placeholder a class holds before
then is never mixed into its estimate.

**Never-seen classes.** Until class ``c`` appears, :meth:`RunningClassMeans.estimate` gives it the
mean ``m`` of the seen columns (no zeros, no NaN). Then the centred estimate ``A M`` (the only part
of ``A`` the solve uses besides its norm) is exactly "seen columns centred among themselves, zero
columns for the unseen": the mean over all ``K`` columns is ``m`` itself, so the unseen columns
centre to 0 and the seen ones are centred by their own mean. An unseen class thus contributes
nothing to the fit term of the inner problem, and the proximal anchor keeps ``U`` defined there.
If no class has been seen, or all seen columns coincide (e.g. a first batch of one class), the
estimate is 0; the head then solves with ``H̄ = 0`` and gets ``U* = U_prev``.

**Distributed.** Under ``torch.distributed`` (initialised, world size > 1) the per-class sums and
counts of ``h̃`` are all-reduced (one collective of a ``K×(d+1)`` tensor) before any mean is formed,
with an autograd-aware all-reduce (as ``torch.distributed.nn.functional.all_reduce``, now deprecated):
every rank computes the same ``A_t``, ``μ_B`` and running state. Its backward sums the incoming
gradients over ranks (every rank must run the backward), so rank
``r``'s features receive the gradient of ``Σ_r' L_r'`` (the sum of all ranks' losses); DDP's averaging
of parameter gradients over ranks then yields the gradient of the mean loss.

A running estimate of the global feature mean (same schedule, with ``t`` = training steps) is kept
for the evaluation-mode bias ``b = -W μ_G``.

**Non-finite and empty batches.** A batch is folded in only if its (all-reduced) batch mean ``μ_B`` is
finite, i.e. no rank's features hold NaN or inf (a non-finite entry anywhere makes its column of the summed
features non-finite). Otherwise every buffer keeps its value (``torch.where`` on the device, no host
sync) and the batch is not counted; raising is the caller's choice (the heads raise on CPU). A batch with
no samples on any rank changes nothing either (``α = 0``). After each update ``accepted`` holds whether the
batch was folded in (finite and non-empty), as a device bool, for the caller's own selects.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .etf import as_flag, as_real, as_size

__all__ = ["SCHEDULES", "mean_alpha", "batch_class_sums", "fill_unseen", "RunningMean", "RunningClassMeans"]

SCHEDULES = ("paper", "cumulative", "ema")


def mean_alpha(
    schedule: str,
    steps: torch.Tensor,
    batch_count: torch.Tensor,
    total_count: torch.Tensor,
    alpha_min: float = 1e-4,
    ema_alpha: float = 0.1,
) -> torch.Tensor:
    """Step size ``α`` per entry of the ``schedule`` (``"paper"``: ``max(2/(t+1), alpha_min)``,
    ``"cumulative"``, ``"ema"``: ``ema_alpha``; module docstring): ``steps`` = updates so far including this one,
    ``batch_count`` = samples in this batch, ``total_count`` = samples so far including this batch. ``α = 0``
    where ``batch_count == 0`` (nothing to update); ``α = 1`` at the first update."""
    t = steps.to(total_count.dtype)
    if schedule == "paper":
        alpha = (2.0 / (t + 1.0)).clamp_min(alpha_min)
    elif schedule == "cumulative":
        alpha = batch_count / total_count.clamp_min(1.0)
    elif schedule == "ema":
        alpha = 1.0 + (ema_alpha - 1.0) * (t > 1)
    else:
        raise ValueError(f"unknown mean schedule {schedule!r}; choose one of {SCHEDULES}")
    return alpha * (batch_count > 0)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward sums the incoming gradients over ranks (the adjoint of the forward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum) over the default group; identity when not distributed."""
    return _AllReduceSum.apply(x) if _world_size() > 1 else x


def batch_class_sums(
    features: torch.Tensor, targets: torch.Tensor, num_classes: int, sync: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums ``S`` (``K×d``, ``K = num_classes``, differentiable) and counts ``n`` (``K``) of
    ``features`` (``N×d``) by ``targets`` (``N``), all-reduced over ranks when ``sync`` and distributed.
    Vectorised with ``index_add`` (no loop over classes, no host sync)."""
    n, d = features.shape
    ones = torch.ones(n, 1, dtype=features.dtype, device=features.device)
    stacked = torch.cat([features, ones], dim=1)  # N×(d+1): last column counts
    sums = stacked.new_zeros(num_classes, d + 1).index_add(0, targets, stacked)
    if sync:
        sums = _all_reduce_sum(sums)
    return sums[:, :d], sums[:, d].detach()


def _count_batch(steps, counts, n, schedule: str, alpha_min: float, ema_alpha: float):
    """``steps``/``counts`` after a batch with ``n`` samples per entry, and the batch's α.

    New tensors, which the modules assign to their buffers: no buffer is updated in place. Under
    ``torch.compile`` (torch 2.13) in-place updates of buffers have been lost (a 0-dim count), and the
    compiled backward may recompute α from the step counters after their update (pytorch/pytorch PR 197039),
    which gave wrong gradients; functional updates avoid both, with the same values."""
    n = n.detach().to(counts.dtype)
    steps, counts = steps + (n > 0).to(steps.dtype), counts + n
    return steps, counts, mean_alpha(schedule, steps, n, counts, alpha_min, ema_alpha)


def _fold_batch_mean(features, mean, steps, counts, schedule: str, alpha_min: float, ema_alpha: float, sync: bool):
    """``μ_B`` of ``features`` (all ranks when ``sync``) folded into the running ``mean``/``steps``/``counts``
    (kept as they are when ``μ_B`` is not finite). Returns ``μ_B`` with gradient, whether the batch was folded
    in (a device flag: finite and non-empty), and the new ``mean``, ``steps``, ``counts`` (detached)."""
    stacked = torch.cat([features.sum(0), features.new_full((1,), features.shape[0])])
    if sync:
        stacked = _all_reduce_sum(stacked)
    mu = stacked[:-1] / stacked[-1].detach().clamp_min(1.0)
    finite = torch.isfinite(mu).all()
    n = stacked[-1].detach() * finite  # a non-finite batch counts as empty: α = 0
    steps, counts, alpha = _count_batch(steps, counts, n, schedule, alpha_min, ema_alpha)
    prev = mean.to(mu.dtype)
    new = torch.where(finite, prev + alpha.to(mu.dtype) * (mu.detach() - prev), prev)
    return mu, n > 0, new.to(mean.dtype, copy=True), steps, counts


class RunningMean(nn.Module):
    """Running estimate ``μ_t = (1-α_t) μ_{t-1} + α_t μ_B`` of the global feature mean (detached),
    ``t`` = number of training batches, ``α`` from :func:`mean_alpha`. Used by ``FixedETFHead``;
    ``RunningClassMeans`` tracks the same quantity alongside the class means."""

    def __init__(
        self, feature_dim: int, schedule: str = "paper", alpha_min: float = 1e-4, ema_alpha: float = 0.1,
        sync: bool = True,
    ) -> None:
        """Args:
            feature_dim: ``d`` (an integer >= 1).
            schedule: ``"paper"``, ``"cumulative"`` or ``"ema"`` (module docstring).
            alpha_min: the floor of the ``"paper"`` step size (in ``[0, 1]``).
            ema_alpha: the fixed ``"ema"`` step size (in ``(0, 1]``).
            sync: all-reduce the batch over ``torch.distributed`` ranks.
        """
        super().__init__()
        feature_dim = as_size("feature_dim", feature_dim, 1)
        alpha_min, ema_alpha = _check_schedule(schedule, alpha_min, ema_alpha)
        self.feature_dim, self.schedule, self.alpha_min, self.ema_alpha = feature_dim, schedule, alpha_min, ema_alpha
        self.sync = as_flag("sync", sync)
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.accepted: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> torch.Tensor:
        """Training step: returns ``μ_B`` (``d``, with gradient; over all ranks when distributed) and
        folds it into the running mean (no gradient, no host sync). ``accepted`` then holds whether the
        batch was folded in (a device bool: finite and non-empty over all ranks)."""
        mu, self.accepted, self.mean, self.step, self.count = _fold_batch_mean(
            features, self.mean, self.step, self.count, self.schedule, self.alpha_min, self.ema_alpha, self.sync)
        return mu

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        keep_saved_dtypes(self, state_dict, prefix)  # a float64 state loads as float64
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RunningClassMeans(nn.Module):
    """The running class-mean estimate ``A_t`` (``d×K``) of the module docstring, and the running
    global mean ``μ_G`` (``d``), updated together as the ``K+1`` columns ``[A | μ_G]``.

    Buffers (all in ``state_dict``): ``means`` (``A``, ``d×K``; unseen columns hold 0 and are never
    read as such), ``global_mean`` (``d``), ``steps`` (``K+1``: batches in which each class appeared,
    then the number of non-empty batches) and ``counts`` (``K+1``: samples per class, then in total).
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        schedule: str = "paper",
        alpha_min: float = 1e-4,
        ema_alpha: float = 0.1,
        sync: bool = True,
    ) -> None:
        """Args:
            feature_dim: ``d`` (an integer >= 1).
            num_classes: ``K`` (an integer >= 1).
            schedule: ``"paper"``, ``"cumulative"`` or ``"ema"`` (module docstring).
            alpha_min: the floor of the ``"paper"`` step size (in ``[0, 1]``).
            ema_alpha: the fixed ``"ema"`` step size (in ``(0, 1]``).
            sync: all-reduce the class sums and counts over ``torch.distributed`` ranks.
        """
        super().__init__()
        feature_dim, num_classes = as_size("feature_dim", feature_dim, 1), as_size("num_classes", num_classes, 1)
        alpha_min, ema_alpha = _check_schedule(schedule, alpha_min, ema_alpha)
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.schedule, self.alpha_min, self.ema_alpha = schedule, alpha_min, ema_alpha
        self.sync = as_flag("sync", sync)
        self.register_buffer("means", torch.zeros(feature_dim, num_classes))
        self.register_buffer("global_mean", torch.zeros(feature_dim))
        self.register_buffer("steps", torch.zeros(num_classes + 1, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(num_classes + 1, dtype=torch.float64))
        self.accepted: torch.Tensor | None = None  # the latest training batch was folded in (set by update)

    def update(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch: ``features`` ``h̃`` (``N×d``), ``targets`` (``N``, in ``[0, K)``).

        Returns ``(A_t, μ_B)``: the estimate with unseen classes filled (``d×K``, gradient through
        ``α B_t``) and the batch mean (``d``, with gradient). Updates the running state (detached);
        a batch with non-finite ``μ_B`` leaves it unchanged and returns the previous estimate as ``A_t``,
        and so does an empty one. ``accepted`` then holds whether the batch was folded in (a device bool:
        finite and non-empty over all ranks; no host sync).
        """
        k = self.num_classes
        sums, counts = batch_class_sums(features, targets, k, self.sync)  # K×d, K
        total = counts.sum(0, keepdim=True)
        mu = sums.sum(0) / total.clamp_min(1.0)
        finite = torch.isfinite(mu).all()
        batch = torch.cat([sums / counts.clamp_min(1.0).unsqueeze(1) - mu, mu.unsqueeze(0)]).T  # [B_t | μ_B]
        n = torch.cat([counts, total]).detach() * finite  # a non-finite batch counts as empty: α = 0
        self.accepted = n[k] > 0
        self.steps, self.counts, alpha = _count_batch(self.steps, self.counts, n, self.schedule, self.alpha_min,
                                                      self.ema_alpha)  # new tensors: see _count_batch
        prev = torch.cat([self.means, self.global_mean.unsqueeze(1)], 1).to(features.dtype)
        new = prev + alpha.to(features.dtype) * (batch - prev)  # (1-α) prev.detach() + α batch; α=0: absent
        new = torch.where(finite, new, prev)  # 0·NaN is NaN: keep the previous state exactly
        self.means = new[:, :k].detach().to(self.means.dtype, copy=True)
        self.global_mean = new[:, k].detach().to(self.global_mean.dtype, copy=True)
        return fill_unseen(new[:, :k], self.steps[:k] > 0), mu

    def update_global(self, features: torch.Tensor) -> torch.Tensor:
        """A training batch that updates ``μ_G`` only (a frozen ``NearestETFHead``): returns ``μ_B`` (``d``, with
        gradient) as :meth:`RunningMean.update` does; ``A`` and the class counts are left as they are."""
        k = self.num_classes
        mu, self.accepted, self.global_mean, step, count = _fold_batch_mean(
            features, self.global_mean, self.steps[k:], self.counts[k:], self.schedule, self.alpha_min,
            self.ema_alpha, self.sync)
        self.steps, self.counts = torch.cat([self.steps[:k], step]), torch.cat([self.counts[:k], count])
        return mu

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        keep_saved_dtypes(self, state_dict, prefix)  # a float64 state loads as float64
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def class_steps(self) -> torch.Tensor:
        """Batches in which each class appeared (``K``); 0 = never seen."""
        return self.steps[: self.num_classes]

    def estimate(self) -> torch.Tensor:
        """Current ``A`` with never-seen classes set to the mean of the seen columns (detached)."""
        return fill_unseen(self.means, self.class_steps > 0)


def keep_saved_dtypes(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """Give each floating-point buffer of ``module`` (its own, not its children's) the dtype of its saved value,
    before ``load_state_dict`` copies into it: a state saved in float64 (``head.double()``, float64 features) comes
    back in float64, not rounded to the dtype the fresh module was built in. Same shape required (else
    ``load_state_dict`` reports the mismatch); parameters keep the module's dtype (an optimiser holds them)."""
    for name, buf in list(module._buffers.items()):
        saved = state_dict.get(prefix + name)
        if (buf is not None and isinstance(saved, torch.Tensor) and buf.is_floating_point()
                and saved.is_floating_point() and saved.dtype != buf.dtype and saved.shape == buf.shape):
            setattr(module, name, torch.empty_like(buf, dtype=saved.dtype))


def fill_unseen(A: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Replace the columns of ``A`` (``d×K``) where ``seen`` is False by the mean of the seen
    columns, so that centering (``A M``) zeroes them and centres the seen ones among themselves.
    All zeros when nothing is seen. No host sync."""
    w = seen.to(A.dtype)
    fill = (A @ w) / w.sum().clamp_min(1.0)
    return torch.where(seen, A, fill.unsqueeze(1))


def _check_schedule(schedule: str, alpha_min: float, ema_alpha: float) -> tuple[float, float]:
    """``(alpha_min, ema_alpha)`` as floats, checked; ``ValueError`` naming the bad argument."""
    alpha_min, ema_alpha = as_real("alpha_min", alpha_min), as_real("ema_alpha", ema_alpha)
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"unknown mean schedule {schedule!r}; choose one of {SCHEDULES}")
    if not 0.0 <= alpha_min <= 1.0:
        raise ValueError(f"alpha_min must lie in [0, 1]; got {alpha_min}")
    if not 0.0 < ema_alpha <= 1.0:
        raise ValueError(f"ema_alpha must lie in (0, 1]; got {ema_alpha}")
    return alpha_min, ema_alpha

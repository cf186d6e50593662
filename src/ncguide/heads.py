"""Classifier heads: nearest simplex ETF (the paper's method), fixed ETF and the standard linear head.

All heads share one interface, so any of them can sit on any backbone that returns ``(N, d)``
features::

    head = build_head("nearest-etf", feature_dim=512, num_classes=100)
    logits = head(features, targets)        # targets needed in training mode for nearest-etf
    loss = F.cross_entropy(logits, targets)
    loss.backward(); optimizer.step(); head.after_step()   # after_step: see StandardHead

Features as the classifier sees them: ``h̃ = τ h/‖h‖`` (``transform``; identity for the plain
head). Logits ``W h̃ + b`` in float32 or better: autocast is disabled inside ``forward`` and the
features are cast up, so the solve never runs in bfloat16/float16.

- ``NearestETFHead``: ``W = sqrt(K/(K-1)) M U*ᵀ`` with ``U*`` the ETF nearest to the running class
  means (``means.py``, ``solve.py``); ``b = -W μ_B`` in training, ``-W μ_G`` (running mean) in eval.
  With ``freeze_after=n``: a fixed ETF at its own ``U`` after ``n`` training updates.
- ``FixedETFHead``: the same with a fixed ``U_0`` (random Haar rotation by default).
- ``StandardHead``: learnable ``Linear(d, K)``; rows renormalised to unit norm by ``after_step()``.

Non-finite and empty training batches: the ETF heads fold a batch into their running means (and store
its ``U*``, and count it as an update) only if its batch mean ``μ_B`` (all-reduced under DDP, so every
rank decides alike) is finite and the batch is not empty on every rank, so NaN/inf features never enter
their state — a NaN in one sample rejects the whole batch — and an empty batch changes nothing. On CPU
(or with ``head.check_finite = True``) a non-finite batch then raises ``NonFiniteFeaturesError`` (a
``ValueError``) with the state exactly as before the call. On other devices the default does not read
the flag on the host (that would add a sync per step): every buffer (the warm solver's and the update
count included) is kept by ``torch.where`` on the device and the logits are NaN, which the training
loop's own loss check reports; the warm solver's host-side schedule is put back one call later, when the
flag's non-blocking copy has arrived (``warm_polar.py``), so the next step is that of a head that never saw
the batch. ``StandardHead`` keeps no running state and does not check (NaN rows
give NaN logits).

``torch.compile``: every head compiles to one graph, with no recompile across training steps, for the
solvers ``auto``, ``polar``, ``polar-gram`` and ``polar-ns`` (``tests/test_compile.py``). Inside a graph
nothing is read on the host: the label range is checked by ``torch._assert_async`` (a ``RuntimeError`` when
the graph runs), a non-finite batch is rejected on the device without raising (as ``check_finite=False``),
and a Gram-route problem too ill-conditioned for ``eigh`` keeps ``U_prev`` (solve.py). Two cases are not
one graph: ``solver="warm"`` runs its solver eagerly between two graphs (its refresh policy is host-side
Python), and a pending ``freeze_after`` breaks the graph once per step (the host decides when to freeze) and
recompiles once, at the freeze. The heads update their buffers by assigning new tensors, not in place
(``means.py`` says why).
"""

from __future__ import annotations

import inspect
import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from .etf import as_flag, as_real, as_size, canonical_stiefel, etf_weight, random_stiefel
from .means import RunningClassMeans, RunningMean, keep_saved_dtypes
from .solve import SOLVERS, nearest_etf, ns_schedule, polar_target
from .warm_polar import WarmPolarSolver

__all__ = [
    "METHODS", "Head", "NearestETFHead", "FixedETFHead", "StandardHead", "NonFiniteFeaturesError", "build_head",
    "head_options", "head_option_types",
]

METHODS = ("standard", "fixed-etf", "nearest-etf", "nearest-etf-nograd", "standard-plain")


class NonFiniteFeaturesError(ValueError):
    """A training batch held NaN or inf features; the head rejected it and its state is unchanged."""


class Head(nn.Module):
    """Base class: ``forward(features, targets=None) -> logits`` (``N×K``, float32 or better),
    ``transform``, the current ``weight`` (``K×d``) and eval-mode ``bias`` (``K``), ``after_step``.

    Label range check: every call for CPU targets; on other devices only on the first call (it needs
    a host sync), after which an out-of-range label fails inside the kernels instead; under
    ``torch.compile`` on the device, in the graph (``torch._assert_async``: a ``RuntimeError``).

    ``check_finite`` (attribute, ETF heads): raise on a non-finite training batch — ``None`` (default):
    on CPU only; ``True``: on every device (one host sync per step on CUDA); ``False``: never. The
    batch is rejected in every case (module docstring).
    """

    needs_targets = False  # targets required in training mode
    check_finite: bool | None = None

    def __init__(
        self, feature_dim: int, num_classes: int, temperature: float = 5.0, normalize_features: bool = True
    ) -> None:
        """Args:
            feature_dim: ``d``, the width of the features the backbone gives (an integer >= 1).
            num_classes: ``K``, the number of classes (an integer >= 2).
            temperature: ``τ`` in ``h̃ = τ h/‖h‖`` (finite, > 0).
            normalize_features: ``False``: the classifier sees the raw features (``h̃ = h``).
        """
        super().__init__()
        self.feature_dim = as_size("feature_dim", feature_dim, 1)
        self.num_classes = as_size("num_classes", num_classes, 2)  # a classifier needs two classes
        temperature = as_real("temperature", temperature)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite positive number; got {temperature}")
        self.temperature, self.normalize_features = temperature, as_flag("normalize_features", normalize_features)
        self._device_targets_checked = False

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """``h̃ = τ h/‖h‖`` row-wise (identity when ``normalize_features=False``), in float32 or better.

        Computed as ``τ g/‖g‖`` with ``g = h/max_j |h_j|`` (the same value, as ``h/‖h‖`` is scale-free), so
        that ``‖h‖`` cannot overflow (features ×1e20 in float32) or underflow; a zero row stays zero and a
        row with NaN or inf gives NaN. The max is detached: ``h/‖h‖`` does not depend on it.
        """
        h = features.to(torch.promote_types(features.dtype, torch.float32))
        if not self.normalize_features:
            return h
        peak = h.detach().abs().amax(dim=1, keepdim=True)
        g = h / torch.where(peak > 0, peak, torch.ones_like(peak))  # max |g_j| = 1: ‖g‖ in [1, sqrt(d)]
        return self.temperature * F.normalize(g, dim=1, eps=1e-12)

    def _reject_non_finite(self, mu: torch.Tensor) -> torch.Tensor:
        """``isfinite(μ_B)`` as a device flag (the rule the running means apply); raises
        ``NonFiniteFeaturesError`` when false and the check is on (``check_finite``; a host read)."""
        finite = torch.isfinite(mu).all()
        check = mu.device.type == "cpu" if self.check_finite is None else self.check_finite
        if check and not torch.compiler.is_compiling() and not bool(finite):
            raise NonFiniteFeaturesError(
                f"{type(self).__name__}: the training batch's features contain NaN or inf; the batch was "
                "rejected and the head's state is unchanged (check the backbone's inputs, or lower the learning rate)"
            )
        return finite

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(N, K)`` of ``features`` (``(N, d)``, floating point) in float32 or wider; ``targets``: the
        class indices ``(N,)``, of any integer dtype, needed in training mode by ``NearestETFHead``."""
        self._check_inputs(features, targets)
        if targets is not None and targets.dtype not in (torch.int64, torch.int32):
            targets = targets.long()  # index_add takes int64/int32 indices
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._logits(self.transform(features), targets)

    def _logits(self, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The current classifier ``W`` (``K×d``), detached."""
        raise NotImplementedError

    @property
    def bias(self) -> torch.Tensor:
        """The evaluation-mode bias ``b`` (``K``), detached."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Call after every ``optimizer.step()`` (no-op except for ``StandardHead``)."""

    def solver_stats(self) -> dict[str, int]:
        """Counters of the head's solver, for logs: ``{}`` unless it keeps some (``NearestETFHead(solver="warm")``)."""
        return {}

    def _check_inputs(self, features: torch.Tensor, targets: torch.Tensor | None) -> None:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must have shape (N, {self.feature_dim}); got {tuple(features.shape)} "
                f"(build the head with feature_dim={features.shape[-1] if features.dim() else '?'} "
                "or flatten the backbone output)"
            )
        if not features.is_floating_point():
            raise ValueError(f"features must be floating point; got {features.dtype}")
        if targets is None:
            if self.training and self.needs_targets:
                raise ValueError(
                    f"{type(self).__name__} needs targets in training mode to update the class means: "
                    "call head(features, targets), or head.eval() for inference"
                )
            return
        integer = not (targets.dtype == torch.bool or targets.dtype.is_floating_point or targets.dtype.is_complex)
        if targets.shape != features.shape[:1] or not integer:
            raise ValueError(
                f"targets must be a tensor of class indices of shape ({features.shape[0]},) and an integer dtype "
                f"(any: int64, int32, uint8, ...; not bool or floating point); got dtype {targets.dtype}, "
                f"shape {tuple(targets.shape)}"
            )
        if torch.compiler.is_compiling():  # in the graph, no host read: fails when the graph runs
            in_range = ((targets >= 0) & (targets < self.num_classes)).all()
            torch._assert_async(in_range, f"targets must be class indices in [0, {self.num_classes})")
            return
        if targets.device.type != "cpu":
            if self._device_targets_checked:
                return
            self._device_targets_checked = True
        if targets.numel() and not bool(((targets >= 0) & (targets < self.num_classes)).all()):
            raise ValueError(
                f"targets must be class indices in [0, {self.num_classes}); got values in "
                f"[{int(targets.min())}, {int(targets.max())}] (remap the labels or set num_classes)"
            )


def _check_etf_dims(feature_dim: int, num_classes: int) -> None:
    if feature_dim < num_classes:
        raise ValueError(
            f"a simplex-ETF head needs feature_dim >= num_classes; got {feature_dim} < {num_classes} "
            "(widen the feature layer, e.g. add a Linear projection, or use StandardHead)"
        )


class NearestETFHead(Head):
    """Classifier set to the simplex ETF nearest to the running class means (Markou et al. 2024).

    Training forward (``targets`` required), ``h̃ = τ h/‖h‖``:

        A_t = running class means (means.py),  H̄ = A_t/‖A_t‖_F  (H̄ = 0 if A_t = 0)
        U*  = argmin_{U ∈ St(d,K)} ‖H̄ - U M/sqrt(K-1)‖²_F + (δ/2)‖U - U_prev‖²_F   (solve.py)
        W   = sqrt(K/(K-1)) M U*ᵀ,   logits = W h̃ - W μ_B

    then ``U_prev ← U*`` (detached; the first anchor is ``U_0`` = first ``K`` columns of ``I_d``).

    ``implicit_grad=True`` backpropagates through the solve (the implicit gradient); ``False`` trains
    without the implicit gradient (solve under ``no_grad``; the features still get gradient
    through ``W h̃ - W μ_B``). Eval forward: ``W`` of the last solution, ``b = -W μ_G`` with the
    running global mean; no state changes. The solve runs in ``solve_dtype`` (default: float32, or
    the features' dtype if wider). The heads' own bookkeeping does no host-device sync;
    on CUDA the default solvers do one (cuSOLVER reports its status to the host; see BENCHMARKS.md §2),
    ``solver="polar-ns"`` none (matrix products only; a CUDA test checks the whole step).

    ``freeze_after = n`` (``None``: never): the first ``n`` training updates (training-mode forwards of
    accepted batches, i.e. optimiser steps; a rejected non-finite batch and an empty batch do not count,
    whether or not the rejection raised) run as above; from then on ``U`` is frozen — no solve, no
    class-mean update — and the head is a fixed ETF at its own ``U``: ``logits = W h̃ - W μ_B`` with
    ``W = sqrt(K/(K-1)) M Uᵀ`` constant, and only the running global mean ``μ_G`` (the eval bias) keeps
    running, as in ``FixedETFHead``. ``n = 0``: frozen at ``U_0``. The count (``updates``, added on the
    device) and the flag (``frozen``, which stays set once set) are buffers, so ``load_state_dict`` resumes
    across the freeze. The host counts calls, an upper bound of ``updates``; the device count is read only
    when that bound reaches ``n`` (one sync, at the freeze). Every DDP rank counts alike.

    ``state_dict()`` holds the whole state; ``U`` is float32, or float64 once a float64 solve has run (float64
    features or ``solve_dtype``), and ``load_state_dict`` gives every buffer (``U``, the running means) the dtype
    it was saved in, whatever the dtype the receiving head was built in.
    """

    needs_targets = True

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        temperature: float = 5.0,
        delta: float = 1e-3,
        solver: str = "auto",
        implicit_grad: bool = True,
        mean_schedule: str = "paper",
        alpha_min: float = 1e-4,
        solve_dtype: torch.dtype | None = None,
        *,
        ema_alpha: float = 0.1,
        sync_distributed: bool = True,
        freeze_after: int | None = None,
    ) -> None:
        """Args:
            feature_dim: ``d``, the width of the features (an integer >= ``num_classes``).
            num_classes: ``K``, the number of classes (an integer >= 2).
            temperature: ``τ`` in ``h̃ = τ h/‖h‖`` (5, as in the paper).
            delta: ``δ >= 0``, the weight of the proximal term ``(δ/2)‖U - U_prev‖²`` that keeps consecutive
                solutions close (1e-3, as in the paper; ``solver="warm"`` needs ``δ > 0``).
            solver: how the inner problem is solved, one of ``SOLVERS``: ``"auto"`` (the float64 Gram route
                for float32 work, else the SVD), ``"polar"``, ``"polar-gram"``, ``"polar-ns"`` (matrix products
                only, no host sync), ``"warm"`` (each step from the last; ``warm_polar.py``), ``"riemannian"``
                (the paper's iterative solver). docs/maths.md §7.
            implicit_grad: backpropagate through the solve (the implicit gradient); ``False`` is the ablation
                that treats ``U*`` as a constant.
            mean_schedule: the step size of the running class means, ``"paper"`` (``α_t = max(2/(t+1),
                α_min)``), ``"cumulative"`` (the plain sample-weighted mean) or ``"ema"`` (``means.py``).
            alpha_min: the floor of the ``"paper"`` schedule's step size (in ``[0, 1]``).
            solve_dtype: the dtype of the solve, ``torch.float32`` or ``torch.float64``; ``None``: float32, or
                the features' dtype if wider.
            ema_alpha: the fixed step size of the ``"ema"`` schedule (in ``(0, 1]``).
            sync_distributed: under ``torch.distributed``, all-reduce the class statistics over ranks so that
                every rank holds the same means and ``U`` (``False``: each rank uses its own batch only).
            freeze_after: ``None``, or the number of training updates after which ``U`` is frozen (an integer
                >= 0; the class docstring).
        """
        super().__init__(feature_dim, num_classes, temperature)
        feature_dim, num_classes = self.feature_dim, self.num_classes
        _check_etf_dims(feature_dim, num_classes)
        if freeze_after is not None and not (
            isinstance(freeze_after, int) and not isinstance(freeze_after, bool) and freeze_after >= 0
        ):
            raise ValueError(f"freeze_after must be None or an integer >= 0 (training updates); got {freeze_after!r}")
        delta, implicit_grad = as_real("delta", delta), as_flag("implicit_grad", implicit_grad)
        if not (delta >= 0 and math.isfinite(delta)):
            raise ValueError(f"delta must be finite and >= 0; got {delta}")
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
        if solver == "warm" and not delta > 0:
            raise ValueError(
                "solver='warm' needs delta > 0: with delta = 0 the target Z = H̄ M/sqrt(K-1) has rank <= K-1 "
                "and its polar factor is not unique (use the default delta=1e-3, or solver='polar')"
            )
        if solve_dtype is not None and solve_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"solve_dtype must be None, torch.float32 or torch.float64; got {solve_dtype}")
        self.delta, self.solver, self.implicit_grad, self.solve_dtype = delta, solver, implicit_grad, solve_dtype
        sync = as_flag("sync_distributed", sync_distributed)
        self.means = RunningClassMeans(feature_dim, num_classes, mean_schedule, alpha_min, ema_alpha, sync=sync)
        self.register_buffer("U", canonical_stiefel(feature_dim, num_classes, dtype=solve_dtype or torch.float32))
        self.warm = WarmPolarSolver(num_classes) if solver == "warm" else None
        if solver == "polar-ns":
            ns_schedule(delta)  # built now, not while torch.compile traces the first step (a recompile at the next)
        self.freeze_after = freeze_after
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen", torch.tensor(freeze_after == 0))
        self._updates, self._frozen = 0, freeze_after == 0  # host copies of the two buffers

    @property
    def is_frozen(self) -> bool:
        """Whether ``U`` is frozen (``freeze_after`` training updates taken, or a frozen state loaded)."""
        return self._frozen

    def _logits(self, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if not self.training:
            W = etf_weight(self.U).to(h.dtype)
            return h @ W.T - W @ self.means.global_mean.to(h.dtype)
        if self._frozen:  # a fixed ETF at the stored U; μ_G keeps running for the eval bias
            mu = self.means.update_global(h)
            self._reject_non_finite(mu)
            self._count_update(self.means.accepted)
            W = etf_weight(self.U).to(h.dtype)
            return h @ W.T - W @ mu
        A, mu = self.means.update(h, targets)  # a non-finite or empty batch leaves the means as they were
        self._reject_non_finite(mu)
        accepted = self.means.accepted  # finite and non-empty (all ranks): a device flag, no host read
        norm = torch.linalg.vector_norm(A)
        Hbar = A / (norm + (norm == 0))  # H̄ = A/‖A‖_F, and 0 (not NaN) when A = 0
        U = self.solve(Hbar)
        # rejected batch: keep U_prev. Float64 features solve in float64: the anchor keeps that precision.
        self.U = torch.where(accepted, U.detach(), self.U.to(U.dtype))  # rebound, not copied into (means.py)
        self._count_update(accepted)
        W = etf_weight(U).to(h.dtype)
        return h @ W.T - W @ mu

    def _count_update(self, accepted: torch.Tensor) -> None:
        """Count an accepted batch in ``updates`` (a device-side add, no sync); freeze when due.

        With ``freeze_after`` pending, the host copy ``_updates`` counts every call, so it is an upper bound of
        ``updates`` (a batch rejected on the device without raising is not seen on the host). Only when that
        bound reaches ``freeze_after`` is the true count read (one sync), so rejected and empty batches never
        move the freeze point.
        """
        self.updates = self.updates + accepted.to(self.updates.dtype)
        if not self._frozen and self.freeze_after is not None:
            self._count_on_host()

    @torch.compiler.disable  # host-side Python state: under torch.compile one graph break, not a recompile per step
    def _count_on_host(self) -> None:
        self._updates += 1
        if self._updates >= self.freeze_after:
            self._updates = int(self.updates)
            if self._updates >= self.freeze_after:
                self._frozen = True
                self.frozen.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Read ``updates``/``frozen`` back to the host (one sync per load). A state saved before they
        existed counts its non-empty batches (``means.steps[K]``) as updates and is not frozen. ``U`` (and every other
        floating-point buffer, the running means' included) keeps the dtype it was saved in."""
        if prefix + "updates" not in state_dict and prefix + "means.steps" in state_dict:
            state_dict[prefix + "updates"] = state_dict[prefix + "means.steps"][-1].clone()
            state_dict.setdefault(prefix + "frozen", torch.tensor(False))
        keep_saved_dtypes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._updates = int(self.updates)
        due = self.freeze_after is not None and self._updates >= self.freeze_after
        self._frozen = bool(self.frozen) or due
        self.frozen.fill_(self._frozen)

    def solve(self, Hbar: torch.Tensor) -> torch.Tensor:
        """``U*`` for the normalised means ``H̄`` (``d×K``), anchored at the stored ``U_prev``. The warm solver
        keeps its state as it was when the running means rejected the latest batch (``means.accepted``)."""
        if self.warm is not None:
            accepted = self.means.accepted if self.training else None
            dtype = self.solve_dtype or torch.promote_types(Hbar.dtype, torch.float32)
            with torch.set_grad_enabled(self.implicit_grad and torch.is_grad_enabled()):
                Hbar = Hbar.to(dtype) if self.implicit_grad else Hbar.detach().to(dtype)
                return self.warm(polar_target(Hbar, self.U.to(dtype), self.delta), self.U, accepted)
        kw = dict(solver=self.solver, dtype=self.solve_dtype, check_finite=False)
        if self.implicit_grad:
            return nearest_etf(Hbar, self.U, self.delta, **kw)
        with torch.no_grad():
            return nearest_etf(Hbar.detach(), self.U, self.delta, **kw)

    def solver_stats(self) -> dict[str, int]:
        """With ``solver="warm"``: ``warm_refreshes``, the exact solves so far, and ``warm_fallbacks``, the steps
        whose answer missed the certificate's ``hard_tol`` and was used as it was or replaced by the previous
        ``U`` (none on the CPU, which solves such a step again exactly; ``ncguide.warm_polar``). Reads two
        device counters (one sync); ``{}`` for the other solvers."""
        if self.warm is None:
            return {}
        return {"warm_refreshes": int(self.warm.refreshes), "warm_fallbacks": int(self.warm.fallbacks)}

    @property
    def weight(self) -> torch.Tensor:
        return etf_weight(self.U).detach()

    @property
    def bias(self) -> torch.Tensor:
        W = self.weight
        return -(W @ self.means.global_mean.to(W.dtype))

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, temperature={self.temperature}, "
            f"delta={self.delta}, solver={self.solver!r}, implicit_grad={self.implicit_grad}, "
            f"mean_schedule={self.means.schedule!r}, freeze_after={self.freeze_after}"
        )


class FixedETFHead(Head):
    """Fixed simplex-ETF classifier ``W = sqrt(K/(K-1)) M U_0ᵀ`` (buffer), ``b = -W μ_B`` in training
    and ``-W μ_G`` (running global mean) in eval. ``rotation="random"`` (default) draws a Haar ``U_0``
    from ``seed``; ``"canonical"`` uses the first ``K`` columns of ``I_d``, which trains slowly and
    unstably under Adam (coordinate-wise updates meet an axis-aligned ETF; docs/maths.md §8)."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        temperature: float = 5.0,
        rotation: str = "random",
        seed: int = 0,
        *,
        mean_schedule: str = "paper",
        alpha_min: float = 1e-4,
        ema_alpha: float = 0.1,
        sync_distributed: bool = True,
    ) -> None:
        """Args:
            feature_dim: ``d``, the width of the features (an integer >= ``num_classes``).
            num_classes: ``K``, the number of classes (an integer >= 2).
            temperature: ``τ`` in ``h̃ = τ h/‖h‖``.
            rotation: ``"random"`` (a Haar-random ``U_0`` drawn from ``seed``) or ``"canonical"`` (the first
                ``K`` columns of ``I_d``).
            seed: the seed of the random rotation.
            mean_schedule: the step size of the running global mean (eval bias): ``"paper"``,
                ``"cumulative"`` or ``"ema"`` (``means.py``).
            alpha_min: the floor of the ``"paper"`` schedule's step size.
            ema_alpha: the fixed step size of the ``"ema"`` schedule.
            sync_distributed: under ``torch.distributed``, all-reduce the batch means over ranks.
        """
        super().__init__(feature_dim, num_classes, temperature)
        feature_dim, num_classes = self.feature_dim, self.num_classes
        _check_etf_dims(feature_dim, num_classes)
        if rotation == "random":
            seed = as_size("seed", seed, 0)
            U0 = random_stiefel(feature_dim, num_classes, generator=torch.Generator().manual_seed(seed))
        elif rotation == "canonical":
            U0 = canonical_stiefel(feature_dim, num_classes)
        else:
            raise ValueError(f"unknown rotation {rotation!r}; choose 'random' or 'canonical'")
        self.rotation = rotation
        self.register_buffer("fixed_weight", etf_weight(U0))
        sync_distributed = as_flag("sync_distributed", sync_distributed)
        self.global_mean = RunningMean(feature_dim, mean_schedule, alpha_min, ema_alpha, sync=sync_distributed)

    def _logits(self, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if self.training:
            mu = self.global_mean.update(h)  # a non-finite batch leaves the running mean as it was
            self._reject_non_finite(mu)
        else:
            mu = self.global_mean.mean.to(h.dtype)
        W = self.fixed_weight.to(h.dtype)
        return h @ W.T - W @ mu

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        keep_saved_dtypes(self, state_dict, prefix)  # a float64 state loads as float64
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def weight(self) -> torch.Tensor:
        return self.fixed_weight.detach()

    @property
    def bias(self) -> torch.Tensor:
        return -(self.fixed_weight @ self.global_mean.mean.to(self.fixed_weight.dtype))

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, "
            f"temperature={self.temperature}, rotation={self.rotation!r}"
        )


class StandardHead(Head):
    """Learnable ``Linear(d, K)`` on ``h̃ = τ h/‖h‖`` — the paper's baseline.

    With ``normalize_weights=True`` the rows of ``W`` are renormalised to unit norm at construction
    and by ``after_step()``, which the training loop must call after every ``optimizer.step()``
    (in your own loop: ``optimizer.step(); head.after_step()``, or once
    ``optimizer.register_step_post_hook(lambda *_: head.after_step())``). The bias stays learnable.
    ``normalize_weights=False, normalize_features=False`` is the ordinary linear layer on raw
    features (``standard-plain``; ``temperature`` is then unused).
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        temperature: float = 5.0,
        normalize_weights: bool = True,
        normalize_features: bool = True,
        bias: bool = True,
    ) -> None:
        """Args:
            feature_dim: ``d``, the width of the features (an integer >= 1).
            num_classes: ``K``, the number of classes (an integer >= 2).
            temperature: ``τ`` in ``h̃ = τ h/‖h‖`` (unused with ``normalize_features=False``).
            normalize_weights: renormalise the rows of ``W`` to unit norm (at construction and by ``after_step``).
            normalize_features: feed ``h̃ = τ h/‖h‖`` (``True``) or the raw features to the linear layer.
            bias: learn a bias ``b`` (``False``: none, ``bias`` reads zeros).
        """
        super().__init__(feature_dim, num_classes, temperature, normalize_features)
        self.normalize_weights = as_flag("normalize_weights", normalize_weights)
        self.linear = nn.Linear(self.feature_dim, self.num_classes, bias=as_flag("bias", bias))
        self.after_step()

    def _logits(self, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        b = self.linear.bias
        return F.linear(h, self.linear.weight.to(h.dtype), None if b is None else b.to(h.dtype))

    def after_step(self) -> None:
        """``W ← W / ‖W_row‖`` (unit-norm rows) when ``normalize_weights``; otherwise nothing."""
        if self.normalize_weights:
            with torch.no_grad():
                w = self.linear.weight
                w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12))

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight.detach()

    @property
    def bias(self) -> torch.Tensor:
        b = self.linear.bias
        return self.linear.weight.new_zeros(self.num_classes) if b is None else b.detach()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, normalize_weights={self.normalize_weights}, "
            f"normalize_features={self.normalize_features}"
        )


_REGISTRY: dict[str, tuple[type[Head], dict]] = {
    "standard": (StandardHead, {}),
    "standard-plain": (StandardHead, {"normalize_weights": False, "normalize_features": False}),
    "fixed-etf": (FixedETFHead, {}),
    "nearest-etf": (NearestETFHead, {"implicit_grad": True}),
    "nearest-etf-nograd": (NearestETFHead, {"implicit_grad": False}),
}


def head_options(method: str) -> set[str]:
    """The keyword options ``build_head(method, ...)`` accepts (its constructor's, less those the method fixes)."""
    if method not in _REGISTRY:
        raise ValueError(f"unknown head method {method!r}; choose one of {METHODS}")
    cls, fixed = _REGISTRY[method]
    return set(inspect.signature(cls.__init__).parameters) - {"self", "feature_dim", "num_classes"} - set(fixed)


def head_option_types(method: str) -> dict[str, object]:
    """``head_options(method)`` with each option's annotated type, e.g. ``{"bias": bool, "temperature": float}``."""
    hints = typing.get_type_hints(_REGISTRY[method][0].__init__) if method in _REGISTRY else {}
    return {name: hints[name] for name in head_options(method)}


def build_head(method: str, feature_dim: int, num_classes: int, **kwargs) -> Head:
    """The head for a method name in ``METHODS``, for ``feature_dim`` (``d``) features and ``num_classes`` (``K``)
    classes; ``kwargs`` go to its constructor (``head_options(method)`` lists them)."""
    allowed = head_options(method)
    cls, fixed = _REGISTRY[method]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"method {method!r} does not take {unknown}; it accepts {sorted(allowed)}")
    return cls(feature_dim, num_classes, **fixed, **kwargs)

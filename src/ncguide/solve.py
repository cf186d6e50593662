"""The inner problem: the simplex ETF nearest to the class means.

    U* = argmin_{U ∈ St(d,K)}  ‖H - U M / sqrt(K-1)‖²_F + (δ/2) ‖U - U_prev‖²_F        (1)

On ``St(d,K)`` both ``‖U‖²_F = K`` and ``tr(UᵀU M) = K-1`` are constant, so (1) equals
``const - 2⟨Z, U⟩`` with

    Z = H M / sqrt(K-1) + (δ/2) U_prev,                                                  (2)

whose minimiser is the orthogonal polar factor of ``Z`` (orthogonal Procrustes): thin SVD
``Z = A Σ Bᵀ``, ``U* = A Bᵀ``. It is the global minimiser, unique when ``σ_min(Z) > 0``; the
certificate is ``⟨Z, U*⟩ = ‖Z‖_*`` (nuclear norm). One ``d×K`` SVD, ``O(dK²)``.

Backward (implicit derivative of (1) = derivative of the polar factor). For ``G = ∂L/∂U*``:

    X = Aᵀ G B,   Ω_ij = (X_ij - X_ji) / (σ_i + σ_j),
    ∂L/∂Z = A Ω Bᵀ + (I - AAᵀ) G B Σ⁻¹ Bᵀ.                                               (3)

(3) is ``O(dK²)`` and only divides by ``σ_i + σ_j`` — unlike autograd through ``torch.linalg.svd``,
whose ``1/(σ_i² - σ_j²)`` terms blow up when singular values coincide, which they do near neural
collapse. The chain through (2) (a centering and a scaling) is left to autograd.

``solver="polar-gram"`` computes the same polar factor from the eigendecomposition of the ``K×K``
Gram matrix ``ZᵀZ = B Σ² Bᵀ`` in float64 (``A = Z B Σ⁻¹``, ``U* = Z B Σ⁻¹ Bᵀ``): squaring the condition
number (``σ_min ≈ δ/2``) is harmless in float64, and a small symmetric eigensolver can be cheaper than a
tall SVD, notably on GPUs. The result is cast back to the compute dtype.

Under ``torch.compile`` the Gram route cannot read its conditioning check on the host without breaking the
graph: there a matrix with ``σ_min/σ_max <= GRAM_MIN_RATIO`` keeps ``U_prev`` instead of the SVD (as
``polar-ns`` does below its design bound; with ``δ >= 1e-3`` this needs means that cancel the anchor, ``d ≈ K``).

``solver="riemannian"`` solves (1) iteratively with trust regions on the Stiefel manifold
(pymanopt, an optional extra), warm-started from ``U_prev`` as in the paper; its gradient is the
same implicit derivative (3) at the exact optimum (from the SVD of ``Z``), which is the derivative at
the solver's point once it has converged.

``solver="polar-ns"`` computes the polar factor and its derivative (3) in float64 from matrix
products only — a Newton–Schulz-type iteration of minimax quintics forward, the Lyapunov form of (3)
by the matrix sign function backward (:mod:`ncguide.polar_iteration`) — with no eigensolver and no
host synchronisation (with ``check_finite=False``), which ``torch.compile`` (tested, one graph) and CUDA
graphs need. The iteration count is fixed on the host for singular values of ``Z/‖ZᵀZ‖_F^{1/2}`` down to
``δ/100`` (11 steps at ``δ = 1e-3``). Typically ``σ_min(Z) ≈ δ/2`` (``Z1 = (δ/2) U_prev 1``), but that
is only an upper bound: when ``d ≈ K`` the class means can cancel the anchor in some direction, and at
``d = K ≤ 10`` about 0.5% of the heads' solves fall below the bound (un-normalised ``H``, with
``‖H‖_F ≫ 1``, does it too). Such a problem is detected on the device (``‖UᵀU - I‖`` above rounding) and,
without a sync, answered with ``U_prev`` (the previous ETF is kept for that step); with
``check_finite=True`` the batch is solved by the SVD instead. ``δ < 1e-6`` uses the SVD.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .etf import canonical_stiefel, center_classes
from .polar_iteration import polar_iteration, polar_iteration_backward, polynomial_schedule

__all__ = [
    "SOLVERS",
    "nearest_etf",
    "polar_target",
    "inner_objective",
    "polar_factor",
    "PolarFactor",
    "GramPolarFactor",
    "IterativePolarFactor",
    "riemannian_nearest_etf",
]

SOLVERS = ("auto", "polar", "polar-gram", "polar-ns", "warm", "riemannian")
GRAM_MIN_RATIO = 1e-4
NS_MIN_LOWER = 1e-8  # polar-ns: below this design bound (δ < 1e-6) the SVD is used instead


def inner_objective(
    U: torch.Tensor, H: torch.Tensor, U_prev: torch.Tensor | None = None, delta: float = 1e-3
) -> torch.Tensor:
    """Objective (1) for ``U, H`` of shape ``(..., d, K)``, anchor ``U_prev`` (``None``: ``U_0``) and proximal
    weight ``delta``; returns shape ``(...)``."""
    k = H.shape[-1]
    if U_prev is None:
        U_prev = canonical_stiefel(H.shape[-2], k, dtype=H.dtype, device=H.device)
    fit = H - center_classes(U) / math.sqrt(k - 1)
    prox = U - U_prev
    return fit.pow(2).sum((-2, -1)) + 0.5 * delta * prox.pow(2).sum((-2, -1))


class PolarFactor(torch.autograd.Function):
    """``U = polar(Z) = A Bᵀ`` for ``Z = A Σ Bᵀ`` with the analytic backward (3)."""

    @staticmethod
    def forward(ctx, Z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _svd_polar(ctx, Z)

    @staticmethod
    @once_differentiable
    def backward(ctx, G: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        A, S, Bh = ctx.saved_tensors
        return _polar_backward(A, S, Bh, G)


class GramPolarFactor(torch.autograd.Function):
    """``polar(Z)`` via ``eigh(ZᵀZ)`` in float64; same backward (3) as :class:`PolarFactor`.

    Its error is about ``1e-16·cond(Z)²``. When some ``σ_min/σ_max < GRAM_MIN_RATIO`` (error above
    ~1e-8, e.g. ``δ = 0``, where ``Z1 = 0``), the batch falls back to the thin SVD (a host read).
    ``apply(Z, False)`` (``verify=False``) reads nothing: it returns ``(U, ok)``, ``ok`` (per matrix, on the
    device) false where the ratio is too small, and leaves the fallback to the caller (``nearest_etf`` under
    ``torch.compile``).
    """

    @staticmethod
    def forward(ctx, Z: torch.Tensor, verify: bool = True):  # type: ignore[override]
        Z64 = Z.double()
        S, B = gram_singular(Z64)
        ok = ~(S[..., 0] <= GRAM_MIN_RATIO * S[..., -1])  # NaN (a rejected batch's) is not a fallback
        if verify and not bool(ok.all()):
            return _svd_polar(ctx, Z)
        S = S.clamp_min(torch.finfo(S.dtype).tiny)  # finite where not ok (that U is not used)
        A = (Z64 @ B) / S.unsqueeze(-2)
        Bh = B.transpose(-1, -2)
        U = A @ Bh
        ctx.save_for_backward(A.to(Z.dtype), S.to(Z.dtype), Bh.to(Z.dtype))
        if verify:
            return U.to(Z.dtype)
        ctx.mark_non_differentiable(ok)
        return U.to(Z.dtype), ok

    @staticmethod
    @once_differentiable
    def backward(ctx, G: torch.Tensor, *_) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        A, S, Bh = ctx.saved_tensors
        return _polar_backward(A, S, Bh, G), None


class IterativePolarFactor(torch.autograd.Function):
    """``polar(Z)`` and its backward (3) from matrix products (:mod:`ncguide.polar_iteration`), computed
    in float64 and cast back, like the Gram route's eigensolve: in float32 the first, widest-interval
    quintics lose ~1e-4 relative accuracy at K = 1000 (their rounding is amplified by 1/σ_min of the
    iterate). On A100/H100-class GPUs float64 matrix products run at the float32 (non-TF32) rate.

    ``steps``: the polynomial schedule (built for a lower bound on the singular values of
    ``Z/‖ZᵀZ‖_F^{1/2}``). Returns ``U`` and ``converged`` (per matrix: ``‖UᵀU - I‖_max <= tol``, a device
    tensor, no sync). ``verify=True`` replaces the batch by its SVD polar factor if any did not converge
    (one sync).
    """

    @staticmethod
    def forward(ctx, Z: torch.Tensor, steps: tuple, verify: bool):  # type: ignore[override]
        Z64 = Z.double()
        U, s = polar_iteration(Z64, steps)
        eye = torch.eye(Z.shape[-1], dtype=U.dtype, device=Z.device)
        tol = 1e-10 if Z.dtype == torch.float64 else 1e-6
        converged = (U.transpose(-1, -2) @ U - eye).abs().amax((-2, -1)) <= tol
        ctx.mark_non_differentiable(converged)
        if verify and Z.numel() and not bool(converged.all()):
            ctx.svd = True
            return _svd_polar(ctx, Z), torch.ones_like(converged)
        ctx.save_for_backward(U, Z64, s)
        ctx.svd, ctx.steps = False, steps
        return U.to(Z.dtype), converged

    @staticmethod
    @once_differentiable
    def backward(ctx, G: torch.Tensor, _):  # type: ignore[override]
        if ctx.svd:
            A, S, Bh = ctx.saved_tensors
            return _polar_backward(A, S, Bh, G), None, None
        U, Z, s = ctx.saved_tensors
        return polar_iteration_backward(U, Z, s, G.double(), ctx.steps).to(G.dtype), None, None


def gram_singular(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values ``Σ`` (ascending) and right singular vectors ``B`` of ``Z`` from ``eigh(ZᵀZ) = B Σ² Bᵀ``."""
    lam, B = torch.linalg.eigh(Z.transpose(-1, -2) @ Z)
    return lam.clamp_min(0).sqrt(), B


def _svd_polar(ctx, Z: torch.Tensor) -> torch.Tensor:
    """``polar(Z) = A Bᵀ`` from the thin SVD, saving ``A, Σ, Bᵀ`` on ``ctx`` for :func:`_polar_backward`."""
    A, S, Bh = torch.linalg.svd(Z, full_matrices=False)
    ctx.save_for_backward(A, S, Bh)
    return A @ Bh


def _polar_backward(A: torch.Tensor, S: torch.Tensor, Bh: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Equation (3). ``A (..., d, K)``, ``S (..., K)``, ``Bh = Bᵀ (..., K, K)``, ``G (..., d, K)``.

    Regrouped so that only three ``d×K×K`` products are formed: with ``X = (AᵀG) B``,
    ``∂L/∂Z = A (Ω - X Σ⁻¹) Bᵀ + G (B Σ⁻¹ Bᵀ)`` — the same as (3), since ``A Aᵀ G B Σ⁻¹ Bᵀ = A X Σ⁻¹ Bᵀ``.
    """
    G = G.to(A.dtype)
    B = Bh.transpose(-1, -2)
    X = (A.transpose(-1, -2) @ G) @ B  # K×K
    s = S.clamp_min(torch.finfo(S.dtype).tiny)
    omega = (X - X.transpose(-1, -2)) / (s.unsqueeze(-1) + s.unsqueeze(-2))
    inv_s = s.reciprocal().unsqueeze(-2)
    return A @ ((omega - X * inv_s) @ Bh) + G @ ((B * inv_s) @ Bh)


def polar_factor(Z: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor of ``Z`` (``(..., d, K)``, ``d >= K``), differentiable by (3)."""
    return PolarFactor.apply(Z)


def nearest_etf(
    H: torch.Tensor,
    U_prev: torch.Tensor | None = None,
    delta: float = 1e-3,
    *,
    solver: str = "auto",
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
    max_iterations: int = 30,
) -> torch.Tensor:
    """Exact minimiser ``U*`` of (1), batched over leading dimensions, differentiable w.r.t. ``H``.

    Args:
        H: class means ``(..., d, K)`` (column ``c`` = centred mean of class ``c``). Used as given:
            the heads normalise it (``H̄ = H/‖H‖_F``) before calling.
        U_prev: proximal anchor ``(..., d, K)`` or ``(d, K)``; ``None`` uses the fixed ``U_0``
            (first ``K`` columns of ``I_d``).
        delta: proximal weight ``δ >= 0``.
        solver: ``"polar"`` (closed form by thin SVD), ``"polar-gram"`` (closed form by a float64
            eigendecomposition of ``ZᵀZ``), ``"polar-ns"`` (the same polar factor by a matrix-product
            iteration in float64, synchronisation-free; see the module docstring for its design bound
            and fallback; ``delta < 1e-6`` uses the SVD), ``"riemannian"`` (trust regions, needs pymanopt) or
            ``"auto"`` (default): ``polar-gram`` when computing in float32 with ``delta > 0`` on CPU or
            CUDA (faster there, and more accurate than a float32 SVD), else ``polar`` (exact in float64;
            also on devices without float64, e.g. Apple's MPS, which the float64 routes need).
        dtype: compute dtype; default the input's, promoted to at least float32 (so also under
            ``torch.autocast``). Pass ``torch.float64`` for more accuracy at large ``K``.
        check_finite: raise on non-finite ``H``/``U_prev`` and, for ``"polar-ns"``, verify convergence
            (costs device syncs on GPU; the heads pass ``False``).
        max_iterations: trust-region iterations for ``solver="riemannian"``.

    Returns:
        ``U`` with the shape of ``H``, ``UᵀU = I``, in the compute dtype.
    """
    _validate(H, U_prev, delta, solver, check_finite)
    d, k = H.shape[-2], H.shape[-1]
    if dtype is None:
        dtype = torch.promote_types(H.dtype, torch.float32)
    with torch.autocast(device_type=H.device.type, enabled=False):
        Hc = H.to(dtype)
        if U_prev is None:
            U_prev = canonical_stiefel(d, k, dtype=dtype, device=H.device)
        U_prev = U_prev.to(dtype)
        Z = polar_target(Hc, U_prev, delta)
        if solver == "auto":
            solver = auto_solver(dtype, delta, H.device.type)
        if solver == "polar":
            return PolarFactor.apply(Z)
        if solver == "polar-gram":
            if not torch.compiler.is_compiling():
                return GramPolarFactor.apply(Z)
            U, ok = GramPolarFactor.apply(Z, False)  # no host read inside a graph: as polar-ns, keep U_prev
            return torch.where(ok[..., None, None], U, U_prev)
        if solver == "polar-ns":
            steps = ns_schedule(delta)
            if steps is None:  # δ = 0: Z1 = 0, Z is singular; tiny δ: too many steps
                return PolarFactor.apply(Z)
            U, converged = IterativePolarFactor.apply(Z, steps, check_finite)
            return torch.where(converged[..., None, None], U, U_prev)  # rare: Z near-singular (see above)
        return _RiemannianNearestETF.apply(Z, Hc.detach(), U_prev.detach(), delta, max_iterations)


def ns_schedule(delta: float):
    """The polynomial schedule ``solver="polar-ns"`` uses at ``delta``: designed for singular values of
    ``Z/‖ZᵀZ‖_F^{1/2}`` down to ``min(δ/100, 0.01)``; ``None`` below ``NS_MIN_LOWER`` (the SVD is used). Cached:
    the heads build it at construction, so that ``torch.compile`` never traces the building."""
    lower = min(0.01 * delta, 0.01)
    return None if lower < NS_MIN_LOWER else polynomial_schedule(lower, 16 * torch.finfo(torch.float64).eps)


def polar_target(H: torch.Tensor, U_prev: torch.Tensor, delta: float) -> torch.Tensor:
    """``Z = H M / sqrt(K-1) + (δ/2) U_prev`` of (2) (``δ = delta``), whose polar factor solves (1); ``U_prev``
    broadcasts."""
    return center_classes(H) / math.sqrt(H.shape[-1] - 1) + (0.5 * delta) * U_prev


def auto_solver(dtype: torch.dtype, delta: float, device_type: str) -> str:
    """What ``solver="auto"`` runs: the float64 Gram route for float32 work with ``δ > 0`` on CPU/CUDA."""
    gram = dtype != torch.float64 and delta > 0 and device_type in ("cpu", "cuda")
    return "polar-gram" if gram else "polar"


def _validate(H: torch.Tensor, U_prev: torch.Tensor | None, delta: float, solver: str, check: bool) -> None:
    if not isinstance(H, torch.Tensor):
        raise ValueError(f"H must be a torch.Tensor of shape (..., d, K); got {type(H).__name__}")
    if H.dim() < 2:
        raise ValueError(f"H must have shape (..., d, K) with at least 2 dimensions; got {tuple(H.shape)}")
    d, k = H.shape[-2], H.shape[-1]
    if k < 2:
        raise ValueError(f"the nearest simplex ETF needs K >= 2 classes; got K={k}")
    if d < k:
        raise ValueError(f"the nearest simplex ETF needs d >= K; got d={d} < K={k} (H has shape (..., d, K))")
    if not (H.is_floating_point()):
        raise ValueError(f"H must be a floating-point tensor; got {H.dtype}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "warm":
        raise ValueError(
            "solver='warm' keeps state between training steps: use NearestETFHead(solver='warm') or "
            "ncguide.WarmPolarSolver on polar_target(H, U_prev, delta)"
        )
    if not (delta >= 0 and math.isfinite(delta)):
        raise ValueError(f"delta must be finite and >= 0; got {delta}")
    if U_prev is not None:
        if U_prev.shape[-2:] != H.shape[-2:] or U_prev.dim() > H.dim():
            raise ValueError(
                f"U_prev must have shape {tuple(H.shape)} or {tuple(H.shape[-2:])} like H; got {tuple(U_prev.shape)}"
            )
        # Leading dims must broadcast to H's (checked by hand: torch.broadcast_shapes costs ~1 s on first use).
        lead = U_prev.shape[:-2]
        if any(u not in (1, h) for u, h in zip(reversed(lead), reversed(H.shape[:-2]))):
            raise ValueError(f"U_prev of shape {tuple(U_prev.shape)} does not broadcast to H's {tuple(H.shape)}")
    if check:
        if not bool(torch.isfinite(H).all()):
            raise ValueError("H has non-finite entries (NaN or inf); check the features fed to the head")
        if U_prev is not None and not bool(torch.isfinite(U_prev).all()):
            raise ValueError("U_prev has non-finite entries (NaN or inf)")


# --------------------------------------------------------------------------- Riemannian solver


def riemannian_nearest_etf(
    H: torch.Tensor,
    U_prev: torch.Tensor,
    delta: float = 1e-3,
    max_iterations: int = 30,
    min_gradient_norm: float = 1e-12,
) -> torch.Tensor:
    """Solve (1) for one ``d×K`` problem with pymanopt's Riemannian trust regions (float64, CPU),
    warm-started at ``U_prev`` — the paper's solver; ``delta`` is ``δ``, and it stops after ``max_iterations``
    or when the Riemannian gradient norm falls below ``min_gradient_norm``. Exact Euclidean gradient and Hessian:

        ∇f(U) = -2c H M + 2c² U M + δ (U - U_prev),   ∇²f(U)[V] = 2c² V M + δ V,   c = 1/sqrt(K-1).
    """
    try:
        import numpy as np
        import pymanopt
        from pymanopt.manifolds import Stiefel
        from pymanopt.optimizers import TrustRegions
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("solver='riemannian' needs pymanopt: pip install 'ncguide[riemannian]'") from exc

    h = H.detach().to("cpu", torch.float64).numpy()
    up = U_prev.detach().to("cpu", torch.float64).numpy()
    d, k = h.shape
    c = 1.0 / math.sqrt(k - 1)
    hm = h - h.mean(axis=1, keepdims=True)

    def centered(x):
        return x - x.mean(axis=1, keepdims=True)

    manifold = Stiefel(d, k)

    @pymanopt.function.numpy(manifold)
    def cost(u):
        return float(np.sum((h - c * centered(u)) ** 2) + 0.5 * delta * np.sum((u - up) ** 2))

    @pymanopt.function.numpy(manifold)
    def egrad(u):
        return -2 * c * hm + 2 * c * c * centered(u) + delta * (u - up)

    @pymanopt.function.numpy(manifold)
    def ehess(u, v):
        return 2 * c * c * centered(v) + delta * v

    problem = pymanopt.Problem(manifold, cost, euclidean_gradient=egrad, euclidean_hessian=ehess)
    optimizer = TrustRegions(max_iterations=max_iterations, min_gradient_norm=min_gradient_norm, verbosity=0)
    x0 = up if np.allclose(up.T @ up, np.eye(k), atol=1e-10) else np.linalg.qr(up)[0]
    result = optimizer.run(problem, initial_point=x0)
    return torch.from_numpy(np.ascontiguousarray(result.point)).to(device=H.device, dtype=H.dtype)


class _RiemannianNearestETF(torch.autograd.Function):
    """Trust-region forward; backward = the implicit derivative (3) at the exact optimum (SVD of ``Z``)."""

    @staticmethod
    def forward(ctx, Z, H, U_prev, delta, max_iterations):  # type: ignore[override]
        U_prev = U_prev.expand(H.shape)
        flat_h = H.reshape(-1, *H.shape[-2:])
        flat_p = U_prev.reshape(-1, *H.shape[-2:])
        U = torch.stack([riemannian_nearest_etf(h, p, delta, max_iterations) for h, p in zip(flat_h, flat_p)]).reshape(
            H.shape
        )
        _svd_polar(ctx, Z)  # the backward is (3) at the exact optimum
        return U

    @staticmethod
    @once_differentiable
    def backward(ctx, G):  # type: ignore[override]
        A, S, Bh = ctx.saved_tensors
        return _polar_backward(A, S, Bh, G), None, None, None, None

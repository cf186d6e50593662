"""Tolerances derived from the computation, for the numerical tests.

Float64 rounding differs between machines and BLAS code paths (MKL's AVX2 and AVX-512 kernels, its
``MKL_CBWR=COMPATIBLE`` path, ATen's vectorised kernels, other BLAS libraries): a tolerance set a few times
above one machine's error fails on the next. Every tolerance here is a first-order error bound of the
computation, ``(dimension factor) × (condition number)^p × u``, times ``FACTOR``; ``u`` is the unit roundoff
(``2⁻⁵³`` in float64).

- A sum (a dot product, an entry of a matrix product) of ``n`` terms of magnitude ``<= scale``: error
  ``<= n u scale`` (the classical ``γ_n`` bound), :func:`sum_tol`.
- The polar factor ``U`` of ``Z`` (``d×K``, ``κ = σ_max/σ_min``) from a backward-stable decomposition (thin
  SVD; the matrix-product iteration behaves alike) is the exact polar factor of ``Z + ΔZ`` with
  ``‖ΔZ‖_F ≲ sqrt(dK) u ‖Z‖₂``; the polar factor's condition number is ``~1/σ_min``, so ``‖ΔU‖_F ≲ sqrt(dK) κ u``,
  and forming ``U`` from the factors adds ``sqrt(dK) K u``. From ``eigh(ZᵀZ)`` (the Gram route, the warm
  route's refreshes) ``σ_min`` carries the relative error ``κ² u`` of the Gram matrix: ``κ`` becomes ``κ²``.
  :func:`polar_tol`. Orthonormality: ``‖UᵀU − I‖_max <= 2 ‖ΔU‖_F`` to first order, :func:`orth_tol`; a
  backward-stable route is orthonormal to rounding whatever ``κ`` (measured: at most ``10.6 sqrt(dK) u``).
- The implicit gradient of the polar factor (``∂L/∂Z``, relative): the forward's error and a Lyapunov solve of
  the same conditioning, twice the polar bound, :func:`polar_grad_rtol`.

``FACTOR = 8``. With a factor of 1, the largest ratio of measured error to model, over random problems
``d×K`` from ``2×2`` to ``512×200`` and ``δ`` from 1e-3 to 0.3 (and designed spectra down to ``κ = 1e5``), was
0.4 for the polar factor (SVD, Gram and matrix-product routes against each other) and 2.6 for the
polar-ns gradient against the SVD form — the same under MKL's default path, ``MKL_CBWR=COMPATIBLE``,
``MKL_CBWR=AVX2`` and ``ATEN_CPU_CAPABILITY=default``. A real defect gives errors of order 1e-3 and more.
"""

from __future__ import annotations

import math

import torch

FACTOR = 8.0


def unit_roundoff(dtype: torch.dtype = torch.float64) -> float:
    """``u = eps/2``: the largest relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def cond(Z: torch.Tensor) -> float:
    """``σ_max/σ_min`` of ``Z`` (``(..., d, K)``; the largest over a batch), from float64 singular values."""
    s = torch.linalg.svdvals(Z.detach().double())
    return float((s[..., 0] / s[..., -1]).max())


def sum_tol(n: int, scale: float = 1.0, dtype: torch.dtype = torch.float64) -> float:
    """Absolute bound on the rounding of a sum of ``n`` terms of magnitude ``<= scale``: ``FACTOR n u scale``."""
    return FACTOR * n * unit_roundoff(dtype) * scale


def polar_tol(Z: torch.Tensor, gram: bool = False, kappa: float | None = None) -> float:
    """Bound on ``‖U − polar(Z)‖_F`` (so on every entry) of a polar factor computed in float64:
    ``FACTOR sqrt(dK) (κ^p + K) u``, ``p = 2`` when it comes from ``eigh(ZᵀZ)`` (``gram=True``), else 1.
    ``kappa`` replaces ``cond(Z)`` (e.g. ``σ_1/σ_{K-1}`` where ``Z`` is singular and only the rest matters)."""
    d, k = Z.shape[-2:]
    kappa = cond(Z) if kappa is None else kappa
    return FACTOR * math.sqrt(d * k) * (kappa ** (2 if gram else 1) + k) * unit_roundoff()


def orth_tol(Z: torch.Tensor, gram: bool = False) -> float:
    """Bound on ``max|UᵀU − I|`` of the polar factor of ``Z`` (``d×K``) computed in float64. A backward-stable
    route (SVD, matrix-product iteration) returns a ``U`` orthonormal to rounding whatever ``Z``'s conditioning
    (it is the polar factor of a nearby matrix): ``2 FACTOR sqrt(dK) (1 + K) u``, from ``Z``'s shape alone. From
    ``eigh(ZᵀZ)`` the error of ``U`` is not of that kind: ``2 polar_tol(Z, gram=True)``."""
    return 2 * polar_tol(Z, gram, kappa=None if gram else 1.0)


def iteration_grad_rtol(Z: torch.Tensor, steps: int) -> float:
    """Bound on the relative error of the implicit gradient from the matrix-product route (``polar-ns``): its
    Lyapunov solve ``Ω`` is the product of ``steps`` polynomial steps with no refinement step after them, each
    rounding at the level of a polar factor (``polar_tol``, ``κ`` from the small eigen-directions of ``P``), and
    the errors of the steps add: ``steps × polar_tol``."""
    return steps * polar_tol(Z)


def polar_grad_rtol(Z: torch.Tensor) -> float:
    """Bound on the relative (Frobenius) error of the implicit gradient ``∂L/∂Z`` of the polar factor (the SVD
    form or the matrix-product route, float64): ``2 × polar_tol`` (the forward, and a Lyapunov solve alike)."""
    return 2 * polar_tol(Z)

"""The polar factor and its derivative from matrix products only: no eigen- or singular-value solver,
no host synchronisation, no data-dependent control flow (``torch.compile(fullgraph=True)`` traces it;
CUDA-graph capture needs the same and is not yet tested on a GPU).

**Forward.** With ``X_0 = Z/s`` (``s >= σ_max(Z)``), iterate odd quintics ``p_k(x) = a x + b x³ + c x⁵``
on the singular values:

    S = XᵀX,    X ← X (a I + b S + c S²),                                               (1)

which maps every singular value through ``p_k`` and leaves the singular vectors alone, so ``X → A Bᵀ``,
the orthogonal polar factor of ``Z = A Σ Bᵀ``. Each ``p_k`` is the best uniform approximation of 1 by an
odd quintic on the current interval ``[l_k, u_k]`` of singular values, its right end widened by 1% so that
rounding cannot push a value past it (Remez, computed on the host once); the next interval is
``[1 - E_k, 1 + E_k]``, ``E_k`` its minimax error; near 1 the fixed quintic ``(15x - 10x³ + 3x⁵)/8``
finishes. This greedy choice is optimal among compositions of quintics (Amsel, Persson, Musco, Musco
2025, "The Polar Express"). From ``l_0 = 1e-5``, 11 steps reach ``E < 1e-14``; the cost is ``O(dK²)``
per step, all matrix products. A singular value below ``l_0`` still grows at every step but need not
reach 1: the caller must check (``ncguide.solve`` does, on the device).

**Backward.** For ``U = polar(Z)``, ``P = UᵀZ = (ZᵀZ)^{1/2}`` and ``G = ∂L/∂U``,

    ∂L/∂Z = U Ω + (I - UUᵀ) G P⁻¹,    P Ω + Ω P = UᵀG - GᵀU,                             (2)

equal to the SVD form of :mod:`ncguide.solve` (with ``Z = AΣBᵀ``: ``Ω = B Ω' Bᵀ``). The Lyapunov equation
is solved with the same polynomials through the matrix sign function (Roberts 1980):

    sign([[P, -C], [0, -P]]) = [[I, -2Ω], [0, -I]]       when  PΩ + ΩP = C,

running (1)'s polynomials on the block upper-triangular matrix: ``Y = [[E, F], [0, -E]]`` stays
block-triangular, ``E → I`` and ``F → -2Ω``, while ``R`` with ``E = P R`` tends to ``P⁻¹``. In the
eigenbasis of ``P`` the computed ``Ω`` and ``P⁻¹`` carry the relative error of the polynomial, ``E_N``.
All ``K×K`` products; ``O(K³)`` per step.
"""

from __future__ import annotations

import math

import torch

__all__ = ["polynomial_schedule", "polar_iteration", "lyapunov_and_inverse", "polar_iteration_backward"]

NARROW = 2e-2  # interval width below which the fixed quintic NEWTON_SCHULZ_5 takes over
NEWTON_SCHULZ_5 = (15 / 8, -10 / 8, 3 / 8)
MARGIN = 1e-2  # relative widening of each designed interval's right end (see polynomial_schedule)
Steps = tuple[tuple[float, float, float], ...]  # a polynomial schedule: (a, b, c) per step


def best_odd_quintic(lower: float, upper: float, iterations: int = 50) -> tuple[float, float, float, float]:
    """Coefficients ``(a, b, c)`` of the odd quintic closest to 1 in max norm on ``[lower, upper]``, and
    its error ``E``: ``1 - p`` equioscillates at ``lower``, the two interior critical points, ``upper``."""
    if not 0 < lower < upper:
        raise ValueError(f"need 0 < lower < upper; got [{lower}, {upper}]")
    ratio = upper / lower
    x = [lower, lower * ratio ** (1 / 3), lower * ratio ** (2 / 3), upper]  # geometric first guess
    sign = [1.0, -1.0, 1.0, -1.0]  # p = 1 - E, 1 + E, 1 - E, 1 + E
    a = b = c = e = 0.0
    for _ in range(iterations):
        # p(x_i) + sign_i E = 1 (4x4, Python floats: no tensors, so torch.compile traces it as constants)
        a, b, c, e = _solve([[xi, xi**3, xi**5, si] for xi, si in zip(x, sign)], [1.0] * 4)
        # interior extrema: p'(x) = a + 3 b x² + 5 c x⁴ = 0, a quadratic in y = x²
        root = math.sqrt(max(9 * b * b - 20 * a * c, 0.0))
        y1, y2 = sorted(((-3 * b - root) / (10 * c), (-3 * b + root) / (10 * c)))
        new = [lower, math.sqrt(max(y1, 0.0)), math.sqrt(max(y2, 0.0)), upper]
        if max(abs(n - o) for n, o in zip(new, x)) <= 1e-15 * upper:
            break
        x = new
    return a, b, c, abs(e)


def _solve(A: list[list[float]], y: list[float]) -> list[float]:
    """``A x = y`` by Gaussian elimination with partial pivoting (small dense systems, Python floats)."""
    n = len(y)
    M = [row[:] + [v] for row, v in zip(A, y)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(M[r][col]))
        M[col], M[pivot] = M[pivot], M[col]
        for r in range(col + 1, n):
            f = M[r][col] / M[col][col]
            M[r] = [v - f * w for v, w in zip(M[r], M[col])]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (M[r][n] - sum(M[r][j] * x[j] for j in range(r + 1, n))) / M[r][r]
    return x


_SCHEDULES: dict[tuple[float, float], Steps] = {}


def polynomial_schedule(lower: float, tol: float = 1e-14) -> Steps:
    """Greedy minimax quintics taking singular values in ``[lower, 1]`` to ``1 ± tol`` (cached)."""
    if (lower, tol) not in _SCHEDULES:
        _SCHEDULES[(lower, tol)] = _greedy_schedule(lower, tol)
    return _SCHEDULES[(lower, tol)]


def _greedy_schedule(lower: float, tol: float) -> Steps:
    if not 0 < lower <= 1:
        raise ValueError(f"lower must lie in (0, 1]; got {lower}")
    steps, lo, hi = [], lower, 1.0
    while True:
        if hi - lo <= 2 * tol:
            return tuple(steps)
        if hi - lo > NARROW:
            # Designed on [lo, (1 + MARGIN) hi]: the minimax quintic rises steeply past its right end, so a
            # value rounded just above hi would be amplified step after step; the margin absorbs rounding.
            a, b, c, err = best_odd_quintic(lo, (1 + MARGIN) * hi)
            lo, hi = 1.0 - err, 1.0 + err
        else:  # near 1 the Remez system degenerates; this quintic has p(1) = 1, p'(1) = p''(1) = 0
            a, b, c = NEWTON_SCHULZ_5
            lo, hi = (a * x + b * x**3 + c * x**5 for x in (lo, hi))  # p is increasing: p' = 15/8 (1 - x²)²
        steps.append((a, b, c))


def _quintic(S: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """``a I + b S + c S²`` for a batch of symmetric ``K×K`` matrices."""
    out = torch.matmul(S, S).mul_(c).add_(S, alpha=b)
    out.diagonal(dim1=-2, dim2=-1).add_(a)
    return out


def _sym(X: torch.Tensor) -> torch.Tensor:
    """The symmetric part ``(X + Xᵀ)/2`` (removes rounding asymmetry of matrices that are symmetric)."""
    return 0.5 * (X + X.transpose(-1, -2))


def gram_scale(S: torch.Tensor) -> torch.Tensor:
    """``s = ‖ZᵀZ‖_F^{1/2} >= σ_max(Z)`` (and ``<= K^{1/4} σ_max``) from ``S = ZᵀZ``, shape ``(..., 1, 1)``."""
    return torch.linalg.matrix_norm(S, keepdim=True).sqrt().clamp_min(torch.finfo(S.dtype).tiny)


def polar_iteration(Z: torch.Tensor, steps: Steps) -> tuple[torch.Tensor, torch.Tensor]:
    """Iteration (1) on ``Z`` (``(..., d, K)``) with the polynomials ``steps`` (``polynomial_schedule``). Returns
    ``U ≈ polar(Z)`` and the scale ``s`` (``X_0 = Z/s``)."""
    S = Z.transpose(-1, -2) @ Z
    s = gram_scale(S)
    X, S = Z / s, S / (s * s)
    for i, (a, b, c) in enumerate(steps):
        if i:
            S = X.transpose(-1, -2) @ X
        X = X @ _quintic(S, a, b, c)
    return X, s


def lyapunov_and_inverse(
    P: torch.Tensor, C: torch.Tensor, s: torch.Tensor, steps: Steps
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Ω`` with ``PΩ + ΩP = C`` (``P`` symmetric positive definite, ``C`` antisymmetric) and ``P⁻¹``,
    both by the block sign iteration above; ``s >= λ_max(P)``, and the spectrum of ``P/s`` must lie in the
    interval ``steps`` was designed for. Per step, with ``T = a I + b E² + c E⁴`` and ``D = EF - FE``:
    ``E ← E T``, ``F ← E (b D + c (E²D + DE²)) + F T``, ``R ← R T``."""
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    E, F, R = P / s, -C / s, eye / s
    for a, b, c in steps:
        E2 = E @ E
        T = _quintic(E2, a, b, c)
        EF = E @ F
        D = EF + EF.transpose(-1, -2)  # EF - FE, since FE = -(EF)ᵀ
        E2D = E2 @ D
        F = E @ (b * D + c * (E2D + E2D.transpose(-1, -2))) + F @ T
        F = 0.5 * (F - F.transpose(-1, -2))  # exactly antisymmetric, as the exact iterates are
        E, R = E @ T, R @ T
        E, R = _sym(E), _sym(R)
    # One Newton step for the inverse, R ← R + R (I - P R): the product of the steps loses ~eps·cond(P)
    # relative accuracy in the small eigen-directions; the step brings R to the accuracy of a direct inverse.
    R = R + R @ (eye - P @ R)
    return -0.5 * F, _sym(R)


def polar_iteration_backward(
    U: torch.Tensor, Z: torch.Tensor, s: torch.Tensor, G: torch.Tensor, steps: Steps
) -> torch.Tensor:
    """Equation (2): ``∂L/∂Z = U (Ω - UᵀG P⁻¹) + G P⁻¹`` for ``U = polar(Z)``, ``G = ∂L/∂U``; ``s`` and ``steps``
    are the scale and the polynomials of the forward ``polar_iteration``."""
    P = _sym(U.transpose(-1, -2) @ Z)
    W = U.transpose(-1, -2) @ G
    omega, P_inv = lyapunov_and_inverse(P, W - W.transpose(-1, -2), s, steps)
    return U @ (omega - W @ P_inv) + G @ P_inv

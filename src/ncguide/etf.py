"""Simplex equiangular tight frame (ETF) algebra.

Notation (docs/maths.md): ``d`` feature dimension, ``K`` classes, ``M = I_K - 11ᵀ/K`` the centering
projector, ``St(d, K) = {U ∈ R^{d×K} : UᵀU = I_K}``. For any ``U ∈ St(d, K)``

    W = sqrt(K/(K-1)) · M Uᵀ            (K×d)

has unit-norm rows with pairwise cosine ``-1/(K-1)``, i.e. ``W Wᵀ = K/(K-1) · M``.

Multiplying by ``M`` only subtracts a mean over the class axis, so this module never forms a
``K×K`` product with ``M`` where a centering does the job in ``O(dK)``.
"""

from __future__ import annotations

import math
import numbers

import torch
from numpy import bool_ as np_bool

__all__ = [
    "centering_matrix",
    "center_classes",
    "canonical_stiefel",
    "random_stiefel",
    "etf_weight",
    "simplex_etf",
    "etf_gram_error",
]


def centering_matrix(
    num_classes: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """``M = I_K - 11ᵀ/K`` (symmetric, idempotent, ``M1 = 0``) for ``num_classes`` ``K``, of ``dtype`` on ``device``."""
    num_classes = as_size("num_classes", num_classes, 1)
    eye = torch.eye(num_classes, dtype=dtype, device=device)
    return eye - 1.0 / num_classes


def center_classes(x: torch.Tensor, class_dim: int = -1) -> torch.Tensor:
    """``x M`` along ``class_dim``: subtract the mean over classes (O(dK), no K×K product)."""
    return x - x.mean(dim=class_dim, keepdim=True)


def canonical_stiefel(
    feature_dim: int,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The fixed anchor ``U_0``: the first ``K`` columns of ``I_d`` (shape ``d×K``; ``d = feature_dim``,
    ``K = num_classes``), of ``dtype`` on ``device``."""
    _check_dims(feature_dim, num_classes)
    return torch.eye(feature_dim, num_classes, dtype=dtype, device=device)


def random_stiefel(
    feature_dim: int,
    num_classes: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A Haar-distributed point of ``St(d, K)`` (``d = feature_dim``, ``K = num_classes``): QR of a Gaussian matrix
    (drawn in float64 from ``generator``) with the signs of ``diag(R)`` folded into ``Q`` (Mezzadri 2007), so the
    distribution is exactly uniform; returned as ``dtype`` on ``device``."""
    _check_dims(feature_dim, num_classes)
    g = torch.randn(feature_dim, num_classes, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1.0
    return (q * sign).to(dtype=dtype, device=device)


def etf_weight(U: torch.Tensor) -> torch.Tensor:
    """``W = sqrt(K/(K-1)) · M Uᵀ``: the simplex-ETF classifier of ``U`` (``(..., d, K) -> (..., K, d)``)."""
    if U.dim() < 2:
        raise ValueError(f"U must have shape (..., d, K); got {tuple(U.shape)}")
    k = U.shape[-1]
    if k < 2:
        raise ValueError(f"a simplex ETF needs K >= 2 classes; got K={k}")
    return math.sqrt(k / (k - 1)) * center_classes(U, class_dim=-1).transpose(-1, -2)


def simplex_etf(
    feature_dim: int,
    num_classes: int,
    random: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A ``K×d`` simplex ETF (``d = feature_dim``, ``K = num_classes``): canonical (axis-aligned ``U_0``), or with
    ``random=True`` randomly rotated (a Haar ``U`` drawn from ``generator``); of ``dtype`` on ``device``."""
    if random:
        U = random_stiefel(feature_dim, num_classes, generator=generator, dtype=dtype, device=device)
    else:
        U = canonical_stiefel(feature_dim, num_classes, dtype=dtype, device=device)
    return etf_weight(U)


def etf_gram_error(W: torch.Tensor) -> torch.Tensor:
    """``‖W Wᵀ - K/(K-1) M‖_F``: zero exactly when the rows of ``W`` form a unit simplex ETF."""
    k = W.shape[-2]
    target = k / (k - 1) * centering_matrix(k, dtype=W.dtype, device=W.device)
    return torch.linalg.matrix_norm(W @ W.transpose(-1, -2) - target)


def as_size(name: str, value, minimum: int) -> int:
    """``value`` as a Python ``int`` if it is an integer (``int``, NumPy or 0-dim integer tensor, not ``bool``)
    of at least ``minimum``; else one ``ValueError`` naming ``name``. Sizes are never rounded: ``4.0`` is refused."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


def as_flag(name: str, value) -> bool:
    """``value`` if it is a ``bool`` (or NumPy's); else one ``ValueError`` naming ``name``: an option that is
    on or off is never read by truthiness (``"off"`` and ``"no"`` are true strings, ``0.5`` a true number)."""
    if not isinstance(value, (bool, np_bool)):
        raise ValueError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def as_real(name: str, value) -> float:
    """``value`` as a ``float`` if it is a real number (``int``, ``float``, NumPy's, a 0-dim real tensor; not a
    ``bool``, not text); else one ``ValueError`` naming ``name``. Ranges are the caller's."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np_bool)):
        raise ValueError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    return float(value)


def _check_dims(feature_dim: int, num_classes: int) -> None:
    feature_dim, num_classes = as_size("feature_dim", feature_dim, 1), as_size("num_classes", num_classes, 1)
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs K >= 2 classes; got K={num_classes}")
    if feature_dim < num_classes:
        raise ValueError(
            f"a simplex ETF in R^d needs d >= K; got d={feature_dim} < K={num_classes} "
            "(widen the feature layer or use fewer classes)"
        )

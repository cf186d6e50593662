"""Neural-collapse (NC) metrics, exact, one-shot or streamed over batches (docs/metrics.md).

Conventions (every metric below is computed in float64):

- **Features.** ``h`` are the features the classifier consumes: ``h̃ = τ·h/‖h‖`` for the ETF and
  standard heads (``head.transform(h)``), the raw features for ``standard-plain``. The classifier is
  ``logits = W h + b`` with ``W`` ``K×d`` and ``b`` ``(K,)`` (``b = 0`` when ``bias=None``).
- **Means.** ``μ_c`` = mean of class ``c``; ``μ̄ = (1/K) Σ_c μ_c`` their centroid (classes weighted
  equally); ``μ_G`` = mean of *all* ``N`` samples (sample-weighted: with imbalanced classes
  ``μ_G ≠ μ̄``). ``H`` is ``K×d`` with rows ``H_c = μ_c - μ̄``. Every class needs at least one sample.
  Which mean each metric uses, and why:

  * ``μ̄`` for everything built on ``H`` — ``Σ_B`` and NC1, NC2 (``nc2_h``), NC3 (``nc3``,
    ``nc3_dist``), ``h_equinorm``/``h_equiangular``/``h_maxangle`` — and for the cosine margins. The
    simplex ETF's vectors sum to zero, so only about ``μ̄`` can exactly collapsed features score 0 when
    the classes are imbalanced (about ``μ_G`` they do not: e.g. ``nc2_h`` 0.26 for classes of 20, 40,
    …, 200 samples). ``Σ_B`` weights the classes equally (``1/K``), and ``μ̄`` is the centre that
    matches those weights: ``rank Σ_B <= K-1`` always (about ``μ_G`` it would gain the rank-one term
    ``(μ̄-μ_G)(μ̄-μ_G)ᵀ``). This is what Papyan et al.'s code and ``rhubarbwu/neural-collapse`` do.
  * ``μ_G`` for ``bias_collapse`` only: it measures the bias against the sample-weighted mean, the
    one the ETF heads subtract (``b = -W μ_B`` in training, ``-W μ_G`` with the running sample mean
    in eval).
  * ``Σ_W`` centres each sample at its own class mean ``μ_{y_i}`` (no global mean involved).

  With balanced classes ``μ̄ = μ_G`` and every metric is as before this distinction was made.
- **Scatter.** ``Σ_W = (1/N) Σ_i (h_i - μ_{y_i})(h_i - μ_{y_i})ᵀ`` (``1/N``, not per class);
  ``Σ_B = (1/K) Σ_c H_c H_cᵀ = HᵀH/K`` (``1/K``, classes weighted equally). ``rank Σ_B <= K-1``.
- **Scale.** The features are first divided by a power of two ``2^e`` (exact) near their largest
  entry, and ``W``, ``b`` likewise (``b`` by both factors), so that no square (``Σ_W``, ``Σ_B``,
  ``WWᵀ``) overflows or underflows float64: features ×1e±200 give the same metrics. Every metric is
  invariant to that rescaling (NC1–NC4, the geometry, accuracy and the margins are scale-free;
  ``argmax(Wh+b)`` is unchanged when ``h``, ``W``, ``b`` are rescaled consistently) except
  ``bias_collapse``, which is multiplied back by the factors (``inf`` if the true value overflows).
- **NC1** (within-class variability), three conventions, all reported:

  * ``nc1 = tr(Σ_W Σ_B⁺)/K`` with ``Σ_B⁺`` the Moore–Penrose pseudo-inverse (docs/metrics.md). As far as
    we know this is the quantity ``Tr(Σ_W Σ_B^†/C)`` plotted by Papyan, Han, Donoho (PNAS 2020).
  * ``nc1_papyan = tr(Σ_W Σ_B⁻¹)`` with the inverse restricted to the top ``K-1`` eigenpairs of
    ``Σ_B`` and no division by ``K``: what the code widely circulated with that line of work computes
    (a truncated SVD of ``Σ_B`` with ``k = C-1``). It equals ``K · nc1`` when ``rank Σ_B = K-1``; when
    ``Σ_B`` has (numerical) rank below ``K-1`` the truncated inverse is unbounded and we return ``inf``.
    That code centres by the mean of the class means, as ``H`` does here, so ``nc1_papyan = K · nc1``
    whenever ``rank Σ_B = K-1``, balanced or not.
  * ``nc1_trace = tr(Σ_W)/tr(Σ_B)``: a scale-free, inverse-free trace ratio.

  All three are ``nan`` when ``Σ_B = 0`` and ``Σ_W = 0`` (``nc1``/``nc1_papyan`` also when only
  ``Σ_B = 0``; ``nc1_trace`` is then ``inf``).
- **Pseudo-inverse, stably and in K dimensions.** With the thin SVD ``H = P S Qᵀ`` (``Q`` ``d×r``),
  ``Σ_B = Q (S²/K) Qᵀ``, so ``Σ_B⁺ = K Q S⁻² Qᵀ`` and
  ``tr(Σ_W Σ_B⁺)/K = Σ_i q_iᵀ Σ_W q_i / s_i²`` over the kept singular values. This never forms or
  inverts a ``d×d`` matrix (cost ``O(K²d + Kd²)``), and cuts off on the singular values of ``H``
  rather than on the eigenvalues of ``Σ_B`` (which square the condition number): ``s_i`` is kept when
  ``s_i > rtol · s_max``, default ``rtol = max(K, d) · eps_float64`` (numpy's ``matrix_rank`` rule).
- **NC2** (simplex ETF), normalised by Frobenius norms: with ``M = I_K - 11ᵀ/K`` (``‖M‖_F = sqrt(K-1)``)
  ``nc2_w = ‖WWᵀ/‖WWᵀ‖_F - M/sqrt(K-1)‖_F``, ``nc2_h`` the same with ``H`` (in ``[0, 2]``).
- **NC3** (self-duality): ``nc3 = ‖WHᵀ/‖WHᵀ‖_F - M/sqrt(K-1)‖_F``, ``W`` the classifier and
  ``H`` the centred means (rows ``μ_c - μ̄``). Also ``nc3_dist = ‖W/‖W‖_F - H/‖H‖_F‖_F``: whether
  ``W`` and ``H`` agree up to scale, not only through their product (the self-duality distance of
  Papyan et al. 2020; the code circulated with that work reports its square).
- **NC4** (nearest class centre): ``nc4`` = fraction of samples with ``argmax_c (Wh+b)_c ≠
  argmin_c ‖h - μ_c‖`` (ties go to the lowest class index in both).
- ``bias_collapse = ‖W μ_G + b‖₂``.
- ``w_equinorm``/``h_equinorm`` = std/mean of the ``K`` row norms of ``W``/``H`` (population std,
  ``ddof=0``; ``torch.std``'s default ``ddof=1`` gives values larger by ``sqrt(K/(K-1))``).
- ``w_equiangular``/``h_equiangular`` = population std of the cosines between rows ``c ≠ c'``;
  ``w_maxangle``/``h_maxangle`` = mean over ``c ≠ c'`` of ``|cos + 1/(K-1)|`` (0 for a simplex ETF;
  the "mutual coherence" of that same code).
  A zero row has cosine 0 with every row.
- ``accuracy`` = fraction with ``argmax_c (Wh+b)_c = y``.
- ``cosine_margin``: per sample ``m_i = cos(h_i - μ̄, w_{y_i}) - max_{c ≠ y_i} cos(h_i - μ̄, w_c)``
  (in ``[-2, 2]``; bias ignored; cosine 0 for a zero vector); the key is the mean. The sorted
  ``m_i`` (the distribution plotted at the end of training) come from ``return_margins=True`` or
  ``NCAccumulator.sorted_margins()``. On an exact simplex ETF every margin is ``K/(K-1)``.
- The loss is not reported (the training loop has it).

Streaming: ``NCAccumulator`` keeps ``O(Kd + d²)`` float64 sums (counts, class sums, scatter; plus
the ``N`` margins when the sorted margins are wanted) and reduces them with
``torch.distributed.all_reduce`` when a process group is initialised. Its scale ``2^e`` follows the
largest batch seen (the sums are rescaled by the exact power of two when it grows), and ranks agree
on the largest ``e`` before reducing, so the result equals the one-shot form's. Pass 1 gives the class means
(and, with ``raw_scatter=True``, a one-pass ``Σ_W = (Σ hhᵀ - Σ_c n_c μ_cμ_cᵀ)/N``); NC4, accuracy
and margins need the means first, so a second pass over the same samples accumulates them together
with the centred ``Σ_W`` (no cancellation). ``nc_metrics_streaming`` runs both passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

from .etf import as_size, centering_matrix

__all__ = ["nc_metrics", "nc_metrics_streaming", "NCAccumulator"]

_F64 = torch.float64
_CHUNK = 8192  # rows per block for the N×K per-sample terms of the one-shot form


# ----------------------------------------------------------------------------- validation


def _check_num_classes(num_classes: int, weight: torch.Tensor | None) -> int:
    if num_classes is None:
        if weight is None:
            raise ValueError("num_classes is unknown: pass num_classes or the classifier weight (K×d)")
        num_classes = weight.shape[0]
    return as_size("num_classes", num_classes, 2)  # NC metrics need K >= 2 classes


def _check_batch(features: torch.Tensor, labels: torch.Tensor, k: int, d: int | None) -> None:
    """Shapes, label dtype and range, finiteness (one device sync)."""
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("features and labels must be torch.Tensors")
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (N, d); got shape {tuple(features.shape)} (flatten them)")
    if d is not None and features.shape[1] != d:
        raise ValueError(f"features have dimension {features.shape[1]} but feature_dim/weight expects {d}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per feature row; got labels {tuple(labels.shape)} "
            f"for features {tuple(features.shape)}"
        )
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be an integer tensor of class indices; got dtype {labels.dtype}")
    if not features.dtype.is_floating_point:
        raise ValueError(f"features must be floating point; got dtype {features.dtype}")
    if labels.numel() == 0:
        return
    ok = torch.isfinite(features).all() & (labels.min() >= 0) & (labels.max() < k)
    if not bool(ok):
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contain NaN or inf; fix the model/inputs before computing NC metrics")
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"labels must lie in [0, {k - 1}] for K={k} classes; got range [{lo}, {hi}]")


def _check_classifier(
    weight: torch.Tensor, bias: torch.Tensor | None, k: int, d: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` (K×d) and ``b`` (K,) as float64 on ``device``; ``b = 0`` when ``bias`` is None."""
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (k, d):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape (K, d) = ({k}, {d}); got {shape}")
    W = weight.detach().to(device=device, dtype=_F64)
    if bias is None:
        b = torch.zeros(k, dtype=_F64, device=device)
    else:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (k,):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape (K,) = ({k},); got {shape}")
        b = bias.detach().to(device=device, dtype=_F64)
    if not bool(torch.isfinite(W).all() & torch.isfinite(b).all()):
        raise ValueError("weight or bias contain NaN or inf")
    return W, b


def _check_counts(counts: torch.Tensor) -> None:
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise ValueError(
            f"{len(empty)} class(es) have no samples (e.g. {shown}); NC metrics need every class present "
            "(pass num_classes equal to the classes in the split, or use a split that covers them)"
        )


# ----------------------------------------------------------------------------- scale

_MAX_EXP = 1020  # |e| of one scale factor 2^e: 2^±1020 and their half-products stay finite and nonzero


def _exponent(x: torch.Tensor, zero: int = 0) -> int:
    """``e`` with ``2^(e-1) <= max|x| < 2^e``, clamped to ``±1020``; ``zero`` for an empty or all-zero ``x``."""
    peak = x.abs().amax() if x.numel() else x.new_zeros(())
    return max(-_MAX_EXP, min(_MAX_EXP, int(torch.frexp(peak).exponent))) if peak > 0 else zero


def _ldexp(x: torch.Tensor, e: int) -> torch.Tensor:
    """``x · 2^e``, exact unless the result itself overflows or underflows (factors of at most ``2^±1000``)."""
    while e:
        step = max(-1000, min(1000, e))
        x, e = x * 2.0**step, e - step
    return x


def _scaled_classifier(W: torch.Tensor, b: torch.Tensor, e_h: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(W/2^w, b/2^(w+e_h), w+e_h)`` for features scaled by ``2^-e_h``: the logits scale by ``2^-(w+e_h)``."""
    e_w = _exponent(W)
    return _ldexp(W, -e_w), _ldexp(b, -(e_w + e_h)), e_w + e_h


# ----------------------------------------------------------------------------- the maths


def _etf_gap(A: torch.Tensor) -> float:
    """``‖A/‖A‖_F - M/sqrt(K-1)‖_F`` for a K×K matrix ``A`` (``nan`` when ``A = 0``)."""
    k = A.shape[0]
    norm = torch.linalg.matrix_norm(A)
    if norm == 0:
        return math.nan
    target = centering_matrix(k, dtype=A.dtype, device=A.device) / math.sqrt(k - 1)
    return float(torch.linalg.matrix_norm(A / norm - target))


def _norm_and_angle_stats(X: torch.Tensor) -> tuple[float, float, float]:
    """Equinorm (std/mean of row norms), equiangular (std of cosines c≠c'), maxangle (mean |cos+1/(K-1)|)."""
    k = X.shape[0]
    norms = torch.linalg.vector_norm(X, dim=1)
    mean = norms.mean()
    equinorm = float(norms.std(correction=0) / mean) if mean > 0 else math.nan
    unit = X / torch.where(norms > 0, norms, torch.ones_like(norms)).unsqueeze(1)
    off = ~torch.eye(k, dtype=torch.bool, device=X.device)
    cos = (unit @ unit.T)[off]
    return equinorm, float(cos.std(correction=0)), float((cos + 1.0 / (k - 1)).abs().mean())


def _right_singular(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values ``s`` (descending) and right singular vectors ``Qh`` (rows ``q_iᵀ``) of ``H``.

    For wide ``H`` (``d > K``) a QR first, ``Hᵀ = Q R``, then the SVD of the K×K ``Rᵀ = P S V``:
    ``H = P S (V Qᵀ)`` — backward stable like a direct SVD and a few times cheaper.
    """
    k, d = H.shape
    if d <= k:
        _, s, Qh = torch.linalg.svd(H, full_matrices=False)
        return s, Qh
    Q, R = torch.linalg.qr(H.T)
    _, s, Vh = torch.linalg.svd(R.T)
    return s, Vh @ Q.T


def _nc1_all(sigma_w: torch.Tensor, H: torch.Tensor, rtol: float | None) -> dict[str, float]:
    """The three NC1 conventions (module docstring), through the SVD of ``H`` (never a d×d inverse)."""
    k, d = H.shape
    tr_w = float(torch.trace(sigma_w))
    tr_b = float(H.pow(2).sum()) / k
    if tr_b == 0:
        return {"nc1": math.nan, "nc1_papyan": math.nan, "nc1_trace": math.inf if tr_w > 0 else math.nan}
    s, Qh = _right_singular(H)
    if rtol is None:
        rtol = max(k, d) * torch.finfo(_F64).eps
    kept = s > rtol * s[0]
    quad = ((Qh @ sigma_w) * Qh).sum(dim=1)  # q_iᵀ Σ_W q_i
    per_dir = quad / s.clamp_min(torch.finfo(_F64).tiny).pow(2)  # = q_iᵀ Σ_W q_i / (K λ_i(Σ_B))
    nc1 = float(per_dir[kept].sum())
    if s.numel() < k - 1 or not bool(kept[: k - 1].all()):
        nc1_papyan = math.inf
    else:
        nc1_papyan = k * float(per_dir[: k - 1].sum())
    return {"nc1": nc1, "nc1_papyan": nc1_papyan, "nc1_trace": tr_w / tr_b}


def _class_means(counts: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``μ_c`` (K×d) and their centroid ``μ̄ = (1/K) Σ_c μ_c`` from counts and class sums."""
    means = sums / counts.unsqueeze(1)
    return means, means.mean(dim=0)


def _geometry(
    counts: torch.Tensor, sums: torch.Tensor, scatter_w: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
    log2_scale: int, rtol: float | None,
) -> dict[str, float]:
    """Metrics from the sufficient statistics: counts (K,), class sums (K×d), ``N Σ_W`` (d×d), of features
    scaled by some ``2^-e``, with ``W``, ``b`` scaled to match (logits ×``2^-log2_scale``; see "Scale")."""
    n = counts.sum()
    means, centroid = _class_means(counts, sums)
    H = means - centroid
    mu_g = sums.sum(dim=0) / n  # sample-weighted: bias_collapse only
    sigma_w = 0.5 * (scatter_w + scatter_w.T) / n
    out = _nc1_all(sigma_w, H, rtol)
    out["nc2_w"] = _etf_gap(W @ W.T)
    out["nc2_h"] = _etf_gap(H @ H.T)
    out["nc3"] = _etf_gap(W @ H.T)
    w_norm, h_norm = torch.linalg.matrix_norm(W), torch.linalg.matrix_norm(H)
    out["nc3_dist"] = float(torch.linalg.matrix_norm(W / w_norm - H / h_norm)) if w_norm * h_norm > 0 else math.nan
    out["bias_collapse"] = float(_ldexp(torch.linalg.vector_norm(W @ mu_g + b), log2_scale))
    out["w_equinorm"], out["w_equiangular"], out["w_maxangle"] = _norm_and_angle_stats(W)
    out["h_equinorm"], out["h_equiangular"], out["h_maxangle"] = _norm_and_angle_stats(H)
    return out


def _sample_terms(
    h: torch.Tensor, y: torch.Tensor, means: torch.Tensor, centre: torch.Tensor, W: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per batch (float64 ``h``): #correct, #(prediction ≠ nearest mean), per-sample cosine margins."""
    pred = (h @ W.T + b).argmax(dim=1)
    # argmin_c ‖h - μ_c‖² = argmin_c (‖μ_c‖² - 2 hᵀμ_c)
    ncc = (means.pow(2).sum(dim=1) - 2.0 * (h @ means.T)).argmin(dim=1)
    correct = (pred == y).sum()
    mismatch = (pred != ncc).sum()
    centred = h - centre
    c_norm = torch.linalg.vector_norm(centred, dim=1, keepdim=True)
    w_norm = torch.linalg.vector_norm(W, dim=1)
    cos = (centred / torch.where(c_norm > 0, c_norm, torch.ones_like(c_norm))) @ (
        W / torch.where(w_norm > 0, w_norm, torch.ones_like(w_norm)).unsqueeze(1)
    ).T
    own = cos.gather(1, y.unsqueeze(1)).squeeze(1)
    other = cos.scatter(1, y.unsqueeze(1), -math.inf).amax(dim=1)
    return correct, mismatch, own - other


# ----------------------------------------------------------------------------- one shot


def nc_metrics(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_classes: int | None = None,
    *,
    return_margins: bool = False,
    rtol: float | None = None,
) -> dict[str, float] | tuple[dict[str, float], torch.Tensor]:
    """All NC metrics of the module docstring for in-memory features (float64, on their device).

    Args:
        features: ``(N, d)`` features as the classifier consumes them (``h̃``).
        labels: ``(N,)`` integer classes in ``[0, K)``; every class must occur.
        weight: classifier ``W`` ``(K, d)``. bias: ``b`` ``(K,)`` or None (zero).
        num_classes: ``K``; default ``weight.shape[0]``.
        return_margins: also return the sorted per-sample cosine margins (float64 tensor ``(N,)``).
        rtol: relative singular-value cutoff of the pseudo-inverse (default ``max(K, d)·eps``).

    Returns:
        dict with keys ``nc1, nc1_papyan, nc1_trace, nc2_w, nc2_h, nc3, nc3_dist, bias_collapse,
        w_equinorm, w_equiangular, w_maxangle, h_equinorm, h_equiangular, h_maxangle, nc4, accuracy,
        cosine_margin`` (python floats); with ``return_margins`` a ``(dict, sorted_margins)`` pair.
    """
    k = _check_num_classes(num_classes, weight)
    d = features.shape[1] if isinstance(features, torch.Tensor) and features.dim() == 2 else None
    _check_batch(features, labels, k, d)
    W, b = _check_classifier(weight, bias, k, features.shape[1], features.device)
    h = features.detach().to(_F64)
    e_h = _exponent(h)
    h = _ldexp(h, -e_h)
    W, b, log2_scale = _scaled_classifier(W, b, e_h)
    y = labels.to(device=h.device, dtype=torch.long)
    counts = torch.bincount(y, minlength=k).to(_F64)
    _check_counts(counts)
    sums = torch.zeros(k, h.shape[1], dtype=_F64, device=h.device).index_add_(0, y, h)
    means, centroid = _class_means(counts, sums)
    dev = h - means[y]
    out = _geometry(counts, sums, dev.T @ dev, W, b, log2_scale, rtol)
    correct = mismatch = 0
    margins = []
    for hb, yb in zip(h.split(_CHUNK), y.split(_CHUNK)):
        c, m, mb = _sample_terms(hb, yb, means, centroid, W, b)
        correct, mismatch = correct + c, mismatch + m
        margins.append(mb)
    margins = torch.cat(margins)
    n = h.shape[0]
    out.update(nc4=float(mismatch) / n, accuracy=float(correct) / n, cosine_margin=float(margins.mean()))
    return (out, margins.sort().values) if return_margins else out


# ----------------------------------------------------------------------------- streaming


def _dist_active(distributed: bool | None) -> bool:
    if distributed is False:
        return False
    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True but torch.distributed is not initialised (call init_process_group)")
    return active


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate 1-D tensors of different lengths from all ranks (rank order)."""
    world = dist.get_world_size()
    n = torch.tensor([x.numel()], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros(max(sizes))
    padded[: x.numel()] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class NCAccumulator:
    """Exact streaming NC metrics: ``update`` per batch, optional second pass, ``compute`` at the end.

    State (float64 on ``device``): counts ``(K,)``, class sums ``(K, d)``, and ``d×d`` scatter
    (``Σ hhᵀ`` in pass 1 when ``raw_scatter``; the centred ``Σ (h-μ_y)(h-μ_y)ᵀ`` in pass 2), plus the
    ``N`` per-sample margins when ``keep_margins``. Under ``torch.distributed`` every rank feeds its
    own shard and ``compute`` all-reduces the sums (call it on every rank; all get the same result).

    Usage::

        acc = NCAccumulator(K, d)
        for h, y in batches(): acc.update(h, y)          # pass 1: class means
        acc.start_second_pass(W, b)                      # freezes (and all-reduces) the means
        for h, y in batches(): acc.update(h, y)          # pass 2: Σ_W, nc4, accuracy, margins
        metrics = acc.compute()

    Without the second pass ``compute(W, b)`` returns every key except ``nc4``, ``accuracy`` and
    ``cosine_margin``, with ``Σ_W`` from the raw second moment (needs ``raw_scatter=True``; exact up to
    float64 cancellation, which the centred second pass avoids).
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        device: torch.device | str | None = None,
        *,
        raw_scatter: bool = True,
        keep_margins: bool = True,
        distributed: bool | None = None,
    ) -> None:
        """Args:
            num_classes: ``K`` (an integer >= 2).
            feature_dim: ``d`` (an integer >= 1).
            device: where the float64 sums live; ``None``: the first batch's device.
            raw_scatter: also accumulate ``Σ hhᵀ`` in pass 1, so that ``compute(W, b)`` works without a second
                pass (``Σ_W`` from the raw second moment).
            keep_margins: keep the ``N`` per-sample cosine margins of pass 2 (for ``sorted_margins``).
            distributed: all-reduce over ``torch.distributed`` ranks in ``compute``; ``None``: when a process
                group with more than one rank is initialised.
        """
        self.num_classes = _check_num_classes(num_classes, None)
        self.feature_dim = as_size("feature_dim", feature_dim, 1)
        self.device = None if device is None else torch.device(device)
        self.raw_scatter = raw_scatter
        self.keep_margins = keep_margins
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        """Forget everything (start a new pass 1)."""
        self.pass_index = 1
        self._exp = -_MAX_EXP  # the sums hold features ×2^-_exp (module docstring, "Scale")
        self._state: dict[str, torch.Tensor] = {}
        self._margins: list[torch.Tensor] = []
        self._frozen: dict[str, torch.Tensor] = {}
        if self.device is not None:
            self._allocate(self.device)

    def _allocate(self, device: torch.device) -> None:
        k, d = self.num_classes, self.feature_dim
        self.device = device
        z = dict(dtype=_F64, device=device)
        self._state = {"counts": torch.zeros(k, **z), "sums": torch.zeros(k, d, **z)}
        if self.raw_scatter:
            self._state["raw"] = torch.zeros(d, d, **z)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``features`` ``(B, d)`` (the ``h̃`` the classifier consumes), ``labels`` ``(B,)``."""
        _check_batch(features, labels, self.num_classes, self.feature_dim)
        if self.device is None:
            self._allocate(features.device)
        h = features.detach().to(device=self.device, dtype=_F64)
        y = labels.to(device=self.device, dtype=torch.long)
        s = self._state
        if self.pass_index == 1:
            self._rescale(max(self._exp, _exponent(h, zero=self._exp)))
            h = _ldexp(h, -self._exp)
            s["counts"] += torch.bincount(y, minlength=self.num_classes).to(_F64)
            s["sums"].index_add_(0, y, h)
            if self.raw_scatter:
                s["raw"].addmm_(h.T, h)
            return
        f = self._frozen
        h = _ldexp(h, -self._exp)  # pass 1's (global) scale: the same samples, so max|h| < 1
        s["counts2"] += torch.bincount(y, minlength=self.num_classes).to(_F64)
        dev = h - f["means"][y]
        s["within"].addmm_(dev.T, dev)
        correct, mismatch, margins = _sample_terms(h, y, f["means"], f["centroid"], f["W_s"], f["b_s"])
        s["correct"] += correct
        s["mismatch"] += mismatch
        s["margin_sum"] += margins.sum()
        if self.keep_margins:
            self._margins.append(margins)

    _DEGREE = {"sums": 1, "raw": 2, "within": 2}  # how the sums scale with the features (others: 0)

    def _rescale(self, e: int) -> None:
        """Hold the sums at scale ``2^-e`` (``e >= self._exp``; exact power-of-two rescaling)."""
        for name, degree in self._DEGREE.items():
            if name in self._state:
                self._state[name] = _ldexp(self._state[name], degree * (self._exp - e))
        self._exp = e

    def _reduced(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Copies of the named sums, all-reduced over ranks when distributed (the local state is kept),
        after the ranks agree on the largest scale ``2^e`` (which becomes this accumulator's)."""
        if not _dist_active(self.distributed):
            return {n: self._state[n].clone() for n in names}
        e = torch.tensor(self._exp, dtype=torch.long, device=self.device)
        dist.all_reduce(e, op=dist.ReduceOp.MAX)
        self._rescale(int(e))
        out = {n: self._state[n].clone() for n in names}
        for t in out.values():
            dist.all_reduce(t)
        return out

    def _pass1_stats(self) -> dict[str, torch.Tensor]:
        if "pass1" in self._frozen:
            return self._frozen["pass1"]
        if self.device is None:
            raise ValueError("no batches seen: call update(features, labels) before computing NC metrics")
        names = ["counts", "sums"] + (["raw"] if self.raw_scatter else [])
        stats = self._reduced(names)
        _check_counts(stats["counts"])
        return stats

    def start_second_pass(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Freeze the class means of pass 1 and the classifier; later ``update`` calls are pass 2."""
        if self.pass_index != 1:
            raise ValueError("the second pass has already started; call reset() to start over")
        stats = self._pass1_stats()
        W, b = _check_classifier(weight, bias, self.num_classes, self.feature_dim, self.device)
        means, centroid = _class_means(stats["counts"], stats["sums"])
        W_s, b_s, log2_scale = _scaled_classifier(W, b, self._exp)
        self._frozen = {
            "pass1": stats, "W": W, "b": b, "means": means, "centroid": centroid,
            "W_s": W_s, "b_s": b_s, "log2_scale": log2_scale,
        }
        z = dict(dtype=_F64, device=self.device)
        d, k = self.feature_dim, self.num_classes
        self._state.update(
            counts2=torch.zeros(k, **z), within=torch.zeros(d, d, **z), correct=torch.zeros((), **z),
            mismatch=torch.zeros((), **z), margin_sum=torch.zeros((), **z),
        )
        self._state.pop("raw", None)
        self.pass_index = 2

    def compute(
        self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *, rtol: float | None = None
    ) -> dict[str, float]:
        """The metrics (module docstring). After a second pass the classifier is the one given to it."""
        stats = self._pass1_stats()
        if self.pass_index == 1:
            if weight is None:
                raise ValueError("compute() needs the classifier weight (K×d) when no second pass was run")
            if not self.raw_scatter:
                raise ValueError("one-pass compute needs raw_scatter=True; or run the second pass first")
            W, b = _check_classifier(weight, bias, self.num_classes, self.feature_dim, self.device)
            sums, counts = stats["sums"], stats["counts"]
            scatter = stats["raw"] - sums.T @ (sums / counts.unsqueeze(1))
            return _geometry(counts, sums, scatter, *_scaled_classifier(W, b, self._exp), rtol)
        W, b = self._frozen["W"], self._frozen["b"]
        if weight is not None:
            W2, b2 = _check_classifier(weight, bias, self.num_classes, self.feature_dim, self.device)
            if not (torch.equal(W, W2) and torch.equal(b, b2)):
                raise ValueError("compute() got a different classifier than start_second_pass(); omit it")
        second = self._reduced(["counts2", "within", "correct", "mismatch", "margin_sum"])
        if not torch.equal(second["counts2"], stats["counts"]):
            raise ValueError(
                "the second pass saw different samples than the first (class counts differ); "
                "make_batches() must yield the same samples each time (no random augmentation or dropping)"
            )
        f = self._frozen
        out = _geometry(stats["counts"], stats["sums"], second["within"], f["W_s"], f["b_s"], f["log2_scale"], rtol)
        n = float(stats["counts"].sum())
        out.update(
            nc4=float(second["mismatch"]) / n,
            accuracy=float(second["correct"]) / n,
            cosine_margin=float(second["margin_sum"]) / n,
        )
        return out

    def sorted_margins(self) -> torch.Tensor:
        """All per-sample cosine margins of pass 2 (gathered over ranks), sorted ascending, float64."""
        if self.pass_index != 2 or not self.keep_margins:
            raise ValueError("sorted margins need keep_margins=True and a second pass (start_second_pass)")
        local = torch.cat(self._margins) if self._margins else torch.zeros(0, dtype=_F64, device=self.device)
        if _dist_active(self.distributed):
            local = _all_gather_cat(local)
        return local.sort().values


def nc_metrics_streaming(
    make_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_classes: int | None = None,
    feature_dim: int | None = None,
    *,
    device: torch.device | str | None = None,
    return_margins: bool = False,
    rtol: float | None = None,
    distributed: bool | None = None,
) -> dict[str, float] | tuple[dict[str, float], torch.Tensor]:
    """Exact NC metrics over a split too large for memory: two passes of ``make_batches()``.

    ``make_batches()`` must return a fresh iterable of ``(features h̃ (B, d), labels (B,))`` over the
    same samples each call (pass 1: class means; pass 2: ``Σ_W``, NC4, accuracy, cosine margins).
    ``weight`` (``K×d``) and ``bias`` (``K``, or ``None``) are the classifier, as in ``nc_metrics``.
    ``num_classes``/``feature_dim`` default to ``weight.shape``; the sums live on ``device``
    (default: the weight's). ``rtol``: the relative threshold below which eigenvalues of ``Σ_B`` count as
    zero in its pseudo-inverse (``None``: ``nc_metrics``'s default). ``distributed``: as in
    ``NCAccumulator``. Under ``torch.distributed`` each rank passes its own shard (possibly
    empty); all ranks get the same result.
    Returns the dict of ``nc_metrics`` (and the sorted margins with ``return_margins``).
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a (K, d) tensor")
    k = weight.shape[0] if num_classes is None else num_classes
    d = weight.shape[1] if feature_dim is None else feature_dim
    device = weight.device if device is None else torch.device(device)
    _check_classifier(weight, bias, _check_num_classes(k, None), d, device)
    acc = NCAccumulator(k, d, device, raw_scatter=False, keep_margins=return_margins, distributed=distributed)
    for h, y in make_batches():
        acc.update(h, y)
    acc.start_second_pass(weight, bias)
    for h, y in make_batches():
        acc.update(h, y)
    out = acc.compute(rtol=rtol)
    return (out, acc.sorted_margins()) if return_margins else out

"""NC metrics: exact collapse, hand-computed cases, an independent numpy oracle, streaming == one shot
(also over 2 gloo processes), invariances, bad input; and the forward-hook feature extraction."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ncguide.etf import random_stiefel, simplex_etf
from ncguide.metrics import NCAccumulator, nc_metrics, nc_metrics_streaming
from tolerances import sum_tol

KEYS = [
    "nc1", "nc1_papyan", "nc1_trace", "nc2_w", "nc2_h", "nc3", "nc3_dist", "nc4", "bias_collapse",
    "w_equinorm", "h_equinorm", "w_equiangular", "h_equiangular", "w_maxangle", "h_maxangle",
    "accuracy", "cosine_margin",
]
PER_SAMPLE = ("nc4", "accuracy", "cosine_margin")
F64 = torch.float64


def make_data(n, d, k, seed=0, imbalanced=False, spread=0.5, dtype=F64):
    """Random labelled features (every class present) and a random classifier."""
    g = torch.Generator().manual_seed(seed)
    if imbalanced:
        probs = torch.rand(k, generator=g, dtype=F64) ** 3 + 0.01
        y = torch.cat([torch.arange(k), torch.multinomial(probs, n - k, replacement=True, generator=g)])
    else:
        y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=g)]
    means = torch.randn(k, d, generator=g, dtype=F64) + 0.3
    h = means[y] + spread * torch.randn(n, d, generator=g, dtype=F64)
    W = torch.randn(k, d, generator=g, dtype=F64)
    b = torch.randn(k, generator=g, dtype=F64)
    return h.to(dtype), y, W, b


def two_magnitudes(h, tiny):
    """Rows where ``tiny`` ×2^-830 (~1e-250), the others ×2^830 (their squares overflow float64)."""
    big, small = torch.tensor(2.0**830, dtype=F64), torch.tensor(2.0**-830, dtype=F64)
    return h * torch.where(tiny, small, big).unsqueeze(1)


SUM_ATOL = sum_tol(4000)  # a metric is made of sums over at most 4000 samples (this file) of O(1) terms


def margin_tol(h: torch.Tensor) -> float:
    """Bound on the error of a cosine margin computed two ways: the centre (a mean of ``n`` rows, error <=
    ``n u max‖h‖``) enters every ``v = h − centre``, a cosine of ``d``-term dot products and norms is off by <=
    ``3 d u``, and a margin is a difference of two cosines."""
    h = h.detach().double()
    h = h / h.abs().max()  # the margins are scale-free; keeps the norms finite for features of any magnitude
    n, d = h.shape
    ratio = float(h.norm(dim=1).max() / (h - h.mean(0)).norm(dim=1).min())
    return 2 * (sum_tol(3 * d) + 2 * sum_tol(n, scale=ratio))


def assert_metrics_close(a, b, rtol=1e-9, atol=SUM_ATOL, keys=None):
    keys = keys or a.keys()
    for key in keys:
        x, y = a[key], b[key]
        if math.isinf(x) or math.isinf(y):
            assert x == y, (key, x, y)
        else:
            assert abs(x - y) <= atol + rtol * abs(y), (key, x, y)


# ----------------------------------------------------------------------------- numpy oracle


def numpy_reference(h, y, W, b, k, centre="centroid"):
    """Plain numpy, straight from the definitions: d×d pseudo-inverse, explicit distances and cosines.
    ``centre="centroid"``: H and the margins centred at the mean of the class means (the convention);
    ``"global"``: at the sample-weighted mean, as before the imbalanced-classes fix (same when balanced)."""
    h, y, W, b = (np.asarray(t, dtype=np.float64) for t in (h, y, W, b))
    y = y.astype(int)
    n, d = h.shape
    mu = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    mu_g = h.mean(axis=0)
    centre_point = mu.mean(axis=0) if centre == "centroid" else mu_g
    H = mu - centre_point
    D = h - mu[y]
    Sw = D.T @ D / n
    Sb = H.T @ H / k
    out = {"nc1": np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)) / k}
    lam, V = np.linalg.eigh(Sb)  # ascending
    if d >= k - 1:
        top, Vt = lam[::-1][: k - 1], V[:, ::-1][:, : k - 1]
        out["nc1_papyan"] = np.trace(Sw @ Vt @ np.diag(1 / top) @ Vt.T)
    out["nc1_trace"] = np.trace(Sw) / np.trace(Sb)
    M = np.eye(k) - np.ones((k, k)) / k

    def etf_gap(A):
        return np.linalg.norm(A / np.linalg.norm(A) - M / np.sqrt(k - 1))

    out["nc2_w"], out["nc2_h"], out["nc3"] = etf_gap(W @ W.T), etf_gap(H @ H.T), etf_gap(W @ H.T)
    out["nc3_dist"] = np.linalg.norm(W / np.linalg.norm(W) - H / np.linalg.norm(H))
    pred = np.argmax(h @ W.T + b, axis=1)
    ncc = np.argmin(np.linalg.norm(h[:, None, :] - mu[None, :, :], axis=2), axis=1)
    out["nc4"] = np.mean(pred != ncc)
    out["accuracy"] = np.mean(pred == y)
    out["bias_collapse"] = np.linalg.norm(W @ mu_g + b)
    for name, X in (("w", W), ("h", H)):
        norms = np.linalg.norm(X, axis=1)
        out[f"{name}_equinorm"] = norms.std() / norms.mean()
        cos = [X[i] @ X[j] / (norms[i] * norms[j]) for i in range(k) for j in range(k) if i != j]
        out[f"{name}_equiangular"] = np.std(cos)
        out[f"{name}_maxangle"] = np.mean(np.abs(np.array(cos) + 1 / (k - 1)))
    margins = []
    for i in range(n):
        v = h[i] - centre_point
        cos = [v @ W[c] / (np.linalg.norm(v) * np.linalg.norm(W[c])) for c in range(k)]
        margins.append(cos[y[i]] - max(cos[c] for c in range(k) if c != y[i]))
    out["cosine_margin"] = np.mean(margins)
    return {key: float(v) for key, v in out.items()}, np.sort(margins)


@pytest.mark.parametrize("imbalanced", [False, True])
@pytest.mark.parametrize("n,d,k", [(60, 5, 3), (200, 16, 10), (150, 40, 7), (90, 4, 6)])
def test_agrees_with_numpy_reference(n, d, k, imbalanced):
    h, y, W, b = make_data(n, d, k, seed=n + d, imbalanced=imbalanced)
    ours, margins = nc_metrics(h, y, W, b, return_margins=True)
    ref, ref_margins = numpy_reference(h, y, W, b, k)
    assert_metrics_close(ours, ref, rtol=1e-8, keys=[key for key in KEYS if key in ref])
    np.testing.assert_allclose(margins.numpy(), ref_margins, rtol=0, atol=margin_tol(h))
    if d < k - 1:  # rank Σ_B <= d < K-1: the top-(K-1) inverse does not exist
        assert ours["nc1_papyan"] == math.inf
    else:  # rank Σ_B = K-1 also with imbalanced classes: H is centred at the centroid of the class means
        assert ours["nc1_papyan"] == pytest.approx(k * ours["nc1"], rel=1e-10)
    assert set(KEYS) <= set(ours)


# ----------------------------------------------------------------------------- exact collapse


@pytest.mark.parametrize("k,d", [(2, 2), (3, 7), (10, 10), (10, 32)])
@pytest.mark.parametrize("per_class", [1, 4])
def test_exact_simplex_etf_collapse_gives_zero(k, d, per_class):
    """h_i = α E_{y_i} + v with E a (rotated) simplex ETF, W = β E, b = -W v (so W μ_G + b = 0)."""
    g = torch.Generator().manual_seed(k + d)
    E = simplex_etf(d, k, random=True, generator=g, dtype=F64)
    v = 3.0 * torch.randn(d, generator=g, dtype=F64)
    y = torch.arange(k).repeat(per_class)
    h = 2.5 * E[y] + v
    W = 0.7 * E
    b = -W @ v
    out, margins = nc_metrics(h, y, W, b, return_margins=True)
    for key in KEYS:
        if key == "accuracy":
            assert out[key] == 1.0
        elif key == "cosine_margin":  # own cosine 1, others -1/(K-1)
            assert out[key] == pytest.approx(k / (k - 1), abs=margin_tol(h))
        else:
            assert abs(out[key]) < 1e-8, (key, out[key])
    torch.testing.assert_close(margins, torch.full_like(margins, k / (k - 1)), rtol=0, atol=margin_tol(h))
    # the one-pass accumulator (raw second moment) is also exact here, up to float64 cancellation
    acc = NCAccumulator(k, d)
    acc.update(h, y)
    one_pass = acc.compute(W, b)
    assert all(abs(one_pass[key]) < 1e-8 for key in KEYS if key not in PER_SAMPLE)


def test_exact_simplex_etf_collapse_with_imbalanced_classes_gives_zero():
    """Classes of 20, 40, ..., 200 samples lying exactly on a simplex ETF (h_i = α E_{y_i} + v): NC2/NC3
    and the H geometry centre at the centroid of the class means (= v, since Σ_c E_c = 0), so they are 0
    and every margin is K/(K-1). bias_collapse uses the sample-weighted μ_G, here ≠ v: ‖W(μ_G - v)‖ > 0."""
    k, d = 10, 16
    g = torch.Generator().manual_seed(0)
    E = simplex_etf(d, k, random=True, generator=g, dtype=F64)
    v = 3.0 * torch.randn(d, generator=g, dtype=F64)
    y = torch.arange(k).repeat_interleave(20 * torch.arange(1, k + 1))
    h = 2.5 * E[y] + v
    W = 0.7 * E
    b = -W @ v
    out, margins = nc_metrics(h, y, W, b, return_margins=True)
    for key in ("nc1", "nc1_trace", "nc2_w", "nc2_h", "nc3", "nc3_dist", "nc4",
                "w_equinorm", "h_equinorm", "w_equiangular", "h_equiangular", "w_maxangle", "h_maxangle"):
        assert abs(out[key]) < 1e-10, (key, out[key])
    assert out["accuracy"] == 1.0
    torch.testing.assert_close(margins, torch.full_like(margins, k / (k - 1)), rtol=0, atol=margin_tol(h))
    assert out["cosine_margin"] == pytest.approx(k / (k - 1), abs=margin_tol(h))
    bias_collapse = float(torch.linalg.vector_norm(W @ (h.mean(0) - v)))
    assert bias_collapse > 0.1 and out["bias_collapse"] == pytest.approx(bias_collapse, rel=sum_tol(len(y)))
    stream = nc_metrics_streaming(batches_of(h, y, [7, 500, len(y) - 507]), W, b)
    assert_metrics_close(stream, out, rtol=1e-10)


@pytest.mark.parametrize("imbalanced", [False, True])
def test_balanced_classes_unchanged_by_the_centroid_centring(imbalanced):
    """With balanced classes the centroid of the class means is the global mean: every metric is what the
    sample-weighted centring gave before. With imbalanced classes the two conventions differ."""
    h, y, W, b = make_data(120, 9, 5, seed=21, imbalanced=imbalanced)
    ours = nc_metrics(h, y, W, b)
    old, _ = numpy_reference(h, y, W, b, 5, centre="global")
    if imbalanced:
        assert abs(ours["nc2_h"] - old["nc2_h"]) > 1e-3 and abs(ours["nc3"] - old["nc3"]) > 1e-3
    else:
        assert_metrics_close(ours, old, rtol=1e-9, keys=[key for key in KEYS if key in old])


# ----------------------------------------------------------------------------- hand-computed cases


def test_two_classes_hand_computed():
    """K=2, d=2. Class 0: (-2,0), (0.5,1), (-1.5,-1), mean (-1,0); class 1: (2,0), (0.1,1), (0.9,-1),
    mean (1,0); μ_G = 0, H = [[-1,0],[1,0]], Σ_B = (1/2)(e1e1ᵀ + e1e1ᵀ) = e1e1ᵀ, Σ_B⁺ = e1e1ᵀ.
    Deviations (x, y): (-1,0), (1.5,1), (-0.5,-1), (1,0), (-0.9,1), (-0.1,-1):
    Σx² = 1+2.25+0.25+1+0.81+0.01 = 5.32, Σy² = 4, so Σ_W = diag-part (5.32/6, 4/6) and
    nc1 = tr(Σ_W Σ_B⁺)/K = (5.32/6)/2; nc1_papyan (top K-1 = 1 eigenpair, eigenvalue 1) = 5.32/6;
    nc1_trace = (9.32/6)/1.
    W = [[-1,0],[1,0]] = H: WWᵀ = WHᵀ = HHᵀ = [[1,-1],[-1,1]] = 2M, so nc2_w = nc2_h = nc3 = nc3_dist = 0.
    b = (0.25,-0.25): predicts class 0 iff x < 0.25; the nearest mean is class 0 iff x < 0.
    (0.5,1) [label 0] -> pred 1, ncc 1 (wrong, agree); (0.1,1) [label 1] -> pred 0, ncc 1 (wrong,
    disagree); the other four are right and agree: accuracy 4/6, nc4 1/6.
    Margins: h - μ_G = h, cos to w0 = -x/‖h‖, to w1 = x/‖h‖, so m = -2x/‖h‖ (class 0), 2x/‖h‖ (class 1).
    bias_collapse = ‖b‖ = 0.25·√2; row norms equal (equinorm 0); one pair with cos -1 = -1/(K-1).
    """
    h = torch.tensor([[-2, 0], [0.5, 1], [-1.5, -1], [2, 0], [0.1, 1], [0.9, -1]], dtype=F64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    W = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64)
    b = torch.tensor([0.25, -0.25], dtype=F64)
    out, margins = nc_metrics(h, y, W, b, return_margins=True)
    sign = torch.where(y == 0, -1.0, 1.0).to(F64)
    expected_margins = (2 * sign * h[:, 0] / h.norm(dim=1)).sort().values
    expected = {
        "nc1": 5.32 / 6 / 2, "nc1_papyan": 5.32 / 6, "nc1_trace": 9.32 / 6,
        "nc2_w": 0.0, "nc2_h": 0.0, "nc3": 0.0, "nc3_dist": 0.0,
        "accuracy": 4 / 6, "nc4": 1 / 6, "bias_collapse": 0.25 * math.sqrt(2),
        "w_equinorm": 0.0, "h_equinorm": 0.0, "w_equiangular": 0.0, "h_equiangular": 0.0,
        "w_maxangle": 0.0, "h_maxangle": 0.0, "cosine_margin": float(expected_margins.mean()),
    }
    # 6 samples in 2-D: every value is a few sums of at most 2·6 terms (Σ_B⁺ of a 2×2, rank 1)
    assert_metrics_close(out, expected, rtol=sum_tol(12), atol=sum_tol(12))
    torch.testing.assert_close(margins, expected_margins, rtol=0, atol=margin_tol(h))
    assert expected_margins[0] == pytest.approx(-1 / math.sqrt(1.25))  # (0.5, 1): -2·0.5/‖h‖


def test_two_classes_identity_classifier_closed_forms():
    """Same features, W = I_2: WWᵀ/‖WWᵀ‖_F = I/√2, M/√(K-1) = M, so
    nc2_w² = 2(1/√2 - 1/2)² + 2(1/2)² = 2 - √2. WHᵀ = [[-1,1],[0,0]] (norm √2), so
    nc3² = 2(1/√2 + 1/2)² + 2(1/2)² = 2 + √2. nc3_dist = ‖(I - H)/√2‖_F = √((4+1+1)/2) = √3.
    The rows of I are orthogonal: cos 0, so w_maxangle = |0 + 1/(K-1)| = 1."""
    h = torch.tensor([[-2, 0], [0.5, 1], [-1.5, -1], [2, 0], [0.1, 1], [0.9, -1]], dtype=F64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    out = nc_metrics(h, y, torch.eye(2, dtype=F64))
    tol = sum_tol(12)  # sums of at most 2·6 terms, then norms of 2×2 matrices
    assert out["nc2_w"] == pytest.approx(math.sqrt(2 - math.sqrt(2)), abs=tol)
    assert out["nc3"] == pytest.approx(math.sqrt(2 + math.sqrt(2)), abs=tol)
    assert out["nc3_dist"] == pytest.approx(math.sqrt(3), abs=tol)
    assert out["w_maxangle"] == pytest.approx(1.0, abs=tol)
    assert out["nc2_h"] == pytest.approx(0.0, abs=tol)


@pytest.mark.parametrize("s,t", [(0.3, 0.0), (0.5, 2.0)])
def test_rank_deficient_between_class_scatter(s, t):
    """K=3 collinear means (-1,0), (0,0), (1,0), balanced, each class = mean + (±s,0), (0,±t).
    μ_G = 0, Σ_B = (1/3)·2 e1e1ᵀ (rank 1 < K-1 = 2), Σ_B⁺ = (3/2) e1e1ᵀ; Σ_W = diag(s²/2, t²/2).
    nc1 = (s²/2)(3/2)/3 = s²/4, however large t is; nc1_trace = ((s²+t²)/2)/(2/3);
    the top-(K-1) inverse does not exist: nc1_papyan = inf.
    H has a zero row: its cosines are 0, so the cosines over ordered pairs are (-1,-1,0,0,0,0):
    h_equiangular = √(2/6 - 1/9) = √2/3."""
    means = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=F64)
    offsets = torch.tensor([[s, 0], [-s, 0], [0, t], [0, -t]], dtype=F64)
    h = (means[:, None, :] + offsets[None]).reshape(-1, 2)
    y = torch.arange(3).repeat_interleave(4)
    out = nc_metrics(h, y, torch.randn(3, 2, dtype=F64))
    tol = sum_tol(2 * len(y))  # sums over 12 samples in 2-D; Σ_B⁺ of a rank-1 2×2
    assert out["nc1"] == pytest.approx(s**2 / 4, rel=tol)
    assert out["nc1_trace"] == pytest.approx((s**2 + t**2) / 2 / (2 / 3), rel=tol)
    assert out["nc1_papyan"] == math.inf
    assert out["h_equiangular"] == pytest.approx(math.sqrt(2) / 3, rel=tol)


def test_sigma_b_zero_gives_nan_not_zero():
    """All class means equal: Σ_B = 0, so NC1 is undefined (pinv(0) = 0 would report a false 0)."""
    h = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    y = torch.tensor([0, 0, 1, 1])
    out = nc_metrics(h, y, torch.eye(2, dtype=F64))
    assert math.isnan(out["nc1"]) and math.isnan(out["nc1_papyan"]) and out["nc1_trace"] == math.inf


# ----------------------------------------------------------------------------- streaming


def batches_of(h, y, sizes):
    def make():
        start = 0
        for s in sizes:
            yield h[start : start + s], y[start : start + s]
            start += s
        assert start == len(y)

    return make


@pytest.mark.parametrize("imbalanced", [False, True])
@pytest.mark.parametrize("sizes", [[1] * 7 + [93], [33, 33, 34], [100]])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_streaming_equals_one_shot(sizes, imbalanced, dtype):
    h, y, W, b = make_data(100, 12, 6, seed=3, imbalanced=imbalanced, dtype=dtype)
    one, margins = nc_metrics(h, y, W, b, return_margins=True)
    stream, stream_margins = nc_metrics_streaming(batches_of(h, y, sizes), W, b, return_margins=True)
    assert_metrics_close(stream, one, rtol=1e-10)
    torch.testing.assert_close(stream_margins, margins, rtol=0, atol=margin_tol(h))
    # one pass, Σ_W from the raw second moment: the same up to float64 cancellation
    acc = NCAccumulator(6, 12)
    for hb, yb in batches_of(h, y, sizes)():
        acc.update(hb, yb)
    one_pass = acc.compute(W, b)
    assert_metrics_close(one_pass, one, rtol=1e-8, keys=[k for k in KEYS if k not in PER_SAMPLE])
    assert not set(PER_SAMPLE) & set(one_pass)


def test_accumulator_api_two_passes_and_reuse():
    h, y, W, b = make_data(80, 9, 4, seed=5)
    acc = NCAccumulator(4, 9, device="cpu", raw_scatter=False)
    for hb, yb in zip(h.split(30), y.split(30)):
        acc.update(hb, yb)
    with pytest.raises(ValueError, match="raw_scatter"):
        acc.compute(W, b)
    acc.start_second_pass(W, b)
    for hb, yb in zip(h.split(17), y.split(17)):  # batching may differ between passes
        acc.update(hb, yb)
    assert_metrics_close(acc.compute(), nc_metrics(h, y, W, b), rtol=1e-10)
    assert acc.compute() == acc.compute()  # compute is repeatable (no double reduction)
    with pytest.raises(ValueError, match="different classifier"):
        acc.compute(W + 1, b)
    with pytest.raises(ValueError, match="already started"):
        acc.start_second_pass(W, b)
    acc.reset()
    with pytest.raises(ValueError, match="sorted margins"):
        acc.sorted_margins()


def test_second_pass_over_different_samples_is_refused():
    h, y, W, b = make_data(40, 5, 3, seed=6)
    calls = []

    def make():
        calls.append(None)
        return [(h, y)] if len(calls) == 1 else [(h[:-1], y[:-1])]

    with pytest.raises(ValueError, match="same samples"):
        nc_metrics_streaming(make, W, b)


@pytest.mark.slow
def test_imagenet_shape_streaming_equals_one_shot():
    """K = 1000, d = 2048 streamed in uneven batches (N = 4000, float32 inputs as a model gives them)."""
    k, d, n = 1000, 2048, 4000
    h, y, W, b = make_data(n, d, k, seed=7, spread=0.8, dtype=torch.float32)
    one = nc_metrics(h, y, W, b)
    sizes = [512] * 7 + [n - 7 * 512]
    stream = nc_metrics_streaming(batches_of(h, y, sizes), W, b)
    assert_metrics_close(stream, one, rtol=1e-9)
    assert one["nc1_papyan"] == pytest.approx(k * one["nc1"], rel=1e-9)  # rank Σ_B = K-1, balanced
    assert 0 < one["nc1"] < math.inf


# ----------------------------------------------------------------------------- invariances


def test_invariant_to_sample_order():
    h, y, W, b = make_data(120, 10, 5, seed=8, imbalanced=True)
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(0))
    a, ma = nc_metrics(h, y, W, b, return_margins=True)
    c, mc = nc_metrics(h[perm], y[perm], W, b, return_margins=True)
    assert_metrics_close(a, c, rtol=1e-10)
    torch.testing.assert_close(ma, mc, rtol=0, atol=margin_tol(h))


def test_invariant_to_class_relabelling():
    h, y, W, b = make_data(120, 10, 5, seed=9, imbalanced=True)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(1))  # class c -> perm[c]
    inv = torch.argsort(perm)
    assert_metrics_close(nc_metrics(h, perm[y], W[inv], b[inv]), nc_metrics(h, y, W, b), rtol=1e-10)


@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e200, 1e-200])
def test_scaling_leaves_scale_free_metrics_unchanged(scale):
    """h -> a·h with b -> a·b scales the logits by a (same argmax); W, b -> β·(W, b) likewise.
    Everything is scale-free except bias_collapse = ‖Wμ_G + b‖, which scales by a (resp. β).
    At 1e±200 the squares (Σ_W, Σ_B, WWᵀ) overflow or underflow float64 unless rescaled first."""
    h, y, W, b = make_data(100, 8, 4, seed=10, imbalanced=True)
    base, base_margins = nc_metrics(h, y, W, b, return_margins=True)
    scale_free = [k for k in KEYS if k != "bias_collapse"]
    for sh, sw in ((scale, 1.0), (1.0, scale)):
        args = (sh * h, y, sw * W, sh * sw * b)
        out, margins = nc_metrics(*args, return_margins=True)
        assert_metrics_close(out, base, rtol=1e-9, keys=scale_free)
        torch.testing.assert_close(margins, base_margins, rtol=0, atol=margin_tol(h))
        assert out["bias_collapse"] == pytest.approx(sh * sw * base["bias_collapse"], rel=sum_tol(len(y)))
        stream = nc_metrics_streaming(batches_of(args[0], y, [30, 1, 69]), args[2], args[3])
        assert_metrics_close(stream, out, rtol=1e-10)
        acc = NCAccumulator(4, 8)
        acc.update(args[0], y)
        pass1_keys = [k for k in KEYS if k not in PER_SAMPLE]
        assert_metrics_close(acc.compute(args[2], args[3]), out, rtol=1e-8, keys=pass1_keys)


def test_streaming_with_batches_of_very_different_magnitude_equals_one_shot():
    """The accumulator's scale follows the largest batch seen (exact power-of-two rescaling of its sums),
    so tiny batches followed by huge ones (or the reverse) neither overflow nor lose the later batches.
    Class 0 at ~1e-250, classes 1 and 2 at ~1e250 (squares overflow float64), batches in class order."""
    h, y, W, b = make_data(120, 6, 3, seed=22, imbalanced=True)
    order = torch.argsort(y, stable=True)
    h, y = two_magnitudes(h[order], y[order] == 0), y[order]
    one, margins = nc_metrics(h, y, W, b, return_margins=True)
    assert all(math.isfinite(v) for v in one.values()) and one["nc1"] > 0
    for flip in (False, True):  # tiny batches first, then huge ones first
        hs, ys = (h.flip(0), y.flip(0)) if flip else (h, y)
        for sizes in ([10, 50, 60], [1] * 120):
            stream, stream_margins = nc_metrics_streaming(batches_of(hs, ys, sizes), W, b, return_margins=True)
            assert_metrics_close(stream, one, rtol=1e-10)
            torch.testing.assert_close(stream_margins, margins, rtol=0, atol=margin_tol(h))
    acc = NCAccumulator(3, 6)
    for hb, yb in batches_of(h, y, [10, 50, 60])():
        acc.update(hb, yb)
    assert_metrics_close(acc.compute(W, b), one, rtol=1e-8, keys=[k for k in KEYS if k not in PER_SAMPLE])


def test_zero_classifier_predicts_by_the_bias_alone():
    """W = 0 has no scale of its own: the logits are b, so accuracy = mean(argmax b = y) and
    bias_collapse = ‖b‖ (a scale chosen from W alone would blow b up to inf)."""
    h, y, _, b = make_data(60, 5, 3, seed=23)
    b = 1e3 * b
    W = torch.zeros(3, 5, dtype=F64)
    out = nc_metrics(h, y, W, b)
    assert out["accuracy"] == pytest.approx(float((y == b.argmax()).double().mean()), abs=sum_tol(len(y)))
    assert out["bias_collapse"] == pytest.approx(float(b.norm()), rel=sum_tol(len(b)))
    stream = nc_metrics_streaming(batches_of(h, y, [20, 40]), W, b)
    undefined = {key for key, v in out.items() if math.isnan(v)}  # nc2_w, nc3, nc3_dist, w_equinorm: W = 0
    assert undefined == {key for key, v in stream.items() if math.isnan(v)}
    assert_metrics_close(stream, out, rtol=1e-10, keys=set(out) - undefined)


def test_invariant_to_rotating_features_and_classifier():
    h, y, W, b = make_data(100, 8, 4, seed=11)
    Q = random_stiefel(8, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert_metrics_close(nc_metrics(h @ Q, y, W @ Q, b), nc_metrics(h, y, W, b), rtol=1e-9)


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    h, y, W, b = make_data(30, 4, 3, seed=12)
    nan_h = h.clone()
    nan_h[3, 1] = math.nan
    inf_h = h.clone()
    inf_h[0, 0] = math.inf
    missing = y.clone()
    missing[missing == 2] = 0
    return {
        "length mismatch": (h, y[:-1], W, b, "one entry per"),
        "empty class": (h, missing, W, b, "no samples"),
        "nan features": (nan_h, y, W, b, "NaN or inf"),
        "inf features": (inf_h, y, W, b, "NaN or inf"),
        "label too large": (h, torch.where(y == 2, 3, y), W, b, r"\[0, 2\]"),
        "negative label": (h, torch.where(y == 2, -1, y), W, b, r"\[0, 2\]"),
        "float labels": (h, y.double(), W, b, "integer"),
        "weight d mismatch": (h, y, W[:, :3], b, "shape"),
        "bias shape": (h, y, W, b[:2], "bias must have shape"),
        "1-D features": (h[:, 0], y, W, b, "2-D"),
        "nan weight": (h, y, W * math.nan, b, "NaN or inf"),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    h, y, W, b, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        nc_metrics(h, y, W, b)
    with pytest.raises(ValueError, match=match):
        nc_metrics_streaming(lambda: [(h, y)], W, b, num_classes=3, feature_dim=4)


def test_weight_rows_must_match_num_classes():
    h, y, W, b = make_data(30, 4, 3, seed=13)
    with pytest.raises(ValueError, match="shape"):
        nc_metrics(h, y, W, b, num_classes=4)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        NCAccumulator(1, 4)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        NCAccumulator(3.5, 4)
    with pytest.raises(ValueError, match="feature_dim must be an integer"):
        NCAccumulator(3, 4.0)
    with pytest.raises(ValueError, match="no batches"):
        NCAccumulator(3, 4).compute(W, b)


# ----------------------------------------------------------------------------- torch.distributed


WORLD = 2


def _ddp_worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        h, y, W, b = make_data(90, 7, 4, seed=14, imbalanced=True)
        shard = slice(0, 50) if rank == 0 else slice(50, 90)  # unequal shards
        hs, ys = h[shard], y[shard]
        out, margins = nc_metrics_streaming(lambda: zip(hs.split(16), ys.split(16)), W, b, return_margins=True)
        acc = NCAccumulator(4, 7)
        acc.update(hs, ys)
        # rank 1 sees no samples at all: its sums are zeros on the weight's device, nothing hangs
        empty = nc_metrics_streaming(lambda: [(h, y)] if rank == 0 else [], W, b)
        # shards of very different magnitude: the ranks' sums are brought to one scale before the reduce
        hw = two_magnitudes(h, torch.arange(len(h)) < 50)[shard]
        wild = nc_metrics_streaming(lambda: zip(hw.split(16), ys.split(16)), W, b)
        result = {"two": out, "margins": margins, "one": acc.compute(W, b), "empty": empty, "wild": wild}
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    h, y, W, b = make_data(90, 7, 4, seed=14, imbalanced=True)
    single, margins = nc_metrics(h, y, W, b, return_margins=True)
    for rank in range(WORLD):
        res = torch.load(tmp_path / f"{rank}.pt")
        assert_metrics_close(res["two"], single, rtol=1e-10)
        torch.testing.assert_close(res["margins"], margins, rtol=0, atol=margin_tol(h))
        assert_metrics_close(res["one"], single, rtol=1e-8, keys=[k for k in KEYS if k not in PER_SAMPLE])
        assert_metrics_close(res["empty"], single, rtol=1e-10)
        wild = two_magnitudes(h, torch.arange(len(h)) < 50)
        assert_metrics_close(res["wild"], nc_metrics(wild, y, W, b), rtol=1e-10)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    h, y, W, b = make_data(500, 64, 10, seed=15, imbalanced=True, dtype=torch.float32)
    cpu, m_cpu = nc_metrics(h, y, W, b, return_margins=True)
    dev = torch.device("cuda")
    gpu, m_gpu = nc_metrics(h.to(dev), y.to(dev), W.to(dev), b.to(dev), return_margins=True)
    assert_metrics_close(gpu, cpu, rtol=1e-9)
    torch.testing.assert_close(m_gpu.cpu(), m_cpu, rtol=0, atol=margin_tol(h))
    batches = lambda: zip(h.to(dev).split(64), y.to(dev).split(64))  # noqa: E731
    assert_metrics_close(nc_metrics_streaming(batches, W.to(dev), b.to(dev)), cpu, rtol=1e-9)

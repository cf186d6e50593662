"""Tests for the classifier heads (heads.py) and the running class means (means.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ncguide.etf import canonical_stiefel, center_classes, centering_matrix, etf_gram_error
from ncguide.heads import (
    METHODS,
    FixedETFHead,
    NearestETFHead,
    NonFiniteFeaturesError,
    StandardHead,
    build_head,
    head_option_types,
)
from ncguide.means import RunningClassMeans, RunningMean
from tolerances import orth_tol, polar_grad_rtol, polar_tol

ETF_TOL = 1e-5


def make_batch(n: int, d: int, k: int, seed: int, dtype=torch.float32, classes=None):
    """Random features and labels; every class in ``classes`` (default all) appears at least once."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.arange(k) if classes is None else torch.as_tensor(classes)
    y = torch.cat([classes, classes[torch.randint(len(classes), (n - len(classes),), generator=g)]])
    return torch.randn(n, d, generator=g, dtype=dtype), y


def blobs(n: int, d_in: int, k: int, seed: int):
    """Separable Gaussian blobs: class c centred at a random point, unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(k, d_in, generator=g)
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d_in, generator=g), y


def reference_logits(h_raw, y, A_prev, steps_prev, U_prev, tau, delta, alpha_min):
    """docs/maths.md §2–§6 written out independently (loops over classes, autograd through an SVD)."""
    d, k = A_prev.shape
    h = tau * h_raw / h_raw.norm(dim=1, keepdim=True)
    mu = h.mean(0)
    cols, steps = [], steps_prev.clone()
    for c in range(k):
        idx = y == c
        if idx.any():
            steps[c] += 1
            a = max(2.0 / (int(steps[c]) + 1), alpha_min)
            cols.append((1 - a) * A_prev[:, c] + a * (h[idx].mean(0) - mu))
        else:
            cols.append(A_prev[:, c])
    A = torch.stack(cols, 1)
    seen = steps > 0
    fill = A[:, seen].mean(1, keepdim=True) if seen.any() else torch.zeros(d, 1, dtype=A.dtype)
    A = torch.where(seen, A, fill)
    M = centering_matrix(k, dtype=A.dtype)
    Z = (A / A.norm()) @ M / math.sqrt(k - 1) + 0.5 * delta * U_prev
    P, _, Qh = torch.linalg.svd(Z, full_matrices=False)
    W = math.sqrt(k / (k - 1)) * M @ (P @ Qh).T
    return h @ W.T - W @ mu, Z.detach()


def head_state(head: NearestETFHead):
    m = head.means
    return m.means.clone(), m.class_steps.clone(), head.U.clone()


# --------------------------------------------------------------------------- nearest-ETF head


@pytest.mark.parametrize("implicit_grad", [True, False])
@pytest.mark.parametrize("schedule", ["paper", "ema"])
def test_every_training_step_gives_simplex_etf_and_the_documented_logits(implicit_grad, schedule):
    torch.manual_seed(0)
    d_in, d, k = 12, 16, 6
    x, y = blobs(240, d_in, k, seed=1)
    backbone = nn.Linear(d_in, d)
    head = NearestETFHead(d, k, implicit_grad=implicit_grad, mean_schedule=schedule)
    opt = torch.optim.Adam(backbone.parameters(), lr=1e-2)
    for step in range(12):
        idx = torch.arange(step * 20, step * 20 + 20) % len(y)
        f = backbone(x[idx])
        logits = head(f, y[idx])
        W = head.weight
        assert etf_gram_error(W.double()) < ETF_TOL
        h = head.transform(f)
        torch.testing.assert_close(logits, h @ W.T - W @ h.mean(0), rtol=0, atol=1e-5)
        opt.zero_grad()
        F.cross_entropy(logits, y[idx]).backward()
        opt.step()
        head.after_step()


def test_matches_an_independent_reference_of_the_whole_chain_in_float64():
    """Logits and feature gradients equal docs/maths.md §2–§6 written from scratch (SVD autograd as oracle),
    including a step where one class is absent and one has never been seen."""
    d, k, tau, delta = 7, 5, 5.0, 1e-3
    head = NearestETFHead(d, k, temperature=tau, delta=delta, alpha_min=0.3).double()
    for step, classes in enumerate([[0, 1, 2], [0, 2, 3], [1, 2, 3]]):
        f, y = make_batch(11, d, k, seed=step, dtype=torch.float64, classes=classes)
        A_prev, steps_prev, U_prev = head_state(head)
        f1 = f.clone().requires_grad_()
        f2 = f.clone().requires_grad_()
        out = head(f1, y)
        ref, Z = reference_logits(f2, y, A_prev, steps_prev, U_prev, tau, delta, alpha_min=0.3)
        # |Δlogits| <= (‖h‖ + ‖μ‖) ‖ΔW‖ <= 2τ · sqrt(2) · (the two solves' errors of U)
        torch.testing.assert_close(out, ref, rtol=0, atol=4 * tau * polar_tol(Z))
        G = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(step))
        (out * G).sum().backward()
        (ref * G).sum().backward()
        rel = torch.linalg.matrix_norm(f1.grad - f2.grad) / torch.linalg.matrix_norm(f2.grad)
        assert rel <= 2 * polar_grad_rtol(Z), rel  # two computations of the implicit gradient


@pytest.mark.parametrize("state", ["fresh", "trained", "unseen-class"])
@pytest.mark.parametrize("schedule", ["paper", "cumulative", "ema"])
def test_gradcheck_logits_wrt_features_through_means_solve_logits(state, schedule):
    d, k = 6, 4
    head = NearestETFHead(d, k, mean_schedule=schedule, ema_alpha=0.3).double()
    classes = [0, 1, 2] if state == "unseen-class" else None
    if state != "fresh":
        for s in range(3):
            head(*make_batch(10, d, k, seed=10 + s, dtype=torch.float64, classes=classes))
    f, y = make_batch(10, d, k, seed=0, dtype=torch.float64, classes=classes)
    f.requires_grad_()
    # the forward updates the running state: a fresh copy per call evaluates the same function.
    # eps = 1e-4: the solve amplifies round-off by ~1/δ, so a smaller step measures round-off, not the slope
    assert torch.autograd.gradcheck(lambda x: copy.deepcopy(head)(x, y), (f,), eps=1e-4, atol=1e-6, rtol=1e-4)


def test_gradient_through_the_solver_differs_from_the_nograd_ablation():
    d, k = 16, 5
    trained = NearestETFHead(d, k)
    for s in range(3):
        trained(*make_batch(40, d, k, seed=s))
    f, y = make_batch(40, d, k, seed=99)
    grads = {}
    for implicit in (True, False):
        head = copy.deepcopy(trained)
        head.implicit_grad = implicit
        x = f.clone().requires_grad_()
        F.cross_entropy(head(x, y), y).backward()
        grads[implicit] = x.grad
        assert torch.isfinite(x.grad).all() and x.grad.norm() > 0
    rel = (grads[True] - grads[False]).norm() / grads[False].norm()
    assert rel > 1e-3


def test_nograd_ablation_still_trains():
    torch.manual_seed(0)
    x, y = blobs(200, 10, 4, seed=3)
    backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 8))
    head = build_head("nearest-etf-nograd", 8, 4)
    opt = torch.optim.Adam(backbone.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(head(backbone(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    head.eval()
    assert (head(backbone(x)).argmax(1) == y).float().mean() > 0.95


def test_eval_uses_last_solution_and_running_mean_without_changing_state():
    d, k = 9, 4
    head = NearestETFHead(d, k)
    for s in range(3):
        head(*make_batch(20, d, k, seed=s))
    state = copy.deepcopy(head.state_dict())
    head.eval()
    f, _ = make_batch(20, d, k, seed=7)
    logits = head(f)
    W = torch.sqrt(torch.tensor(k / (k - 1))) * center_classes(head.U).T
    torch.testing.assert_close(logits, head.transform(f) @ W.T - W @ head.means.global_mean)
    torch.testing.assert_close(head.bias, -W @ head.means.global_mean)
    for key, value in head.state_dict().items():
        assert torch.equal(value, state[key]), key


# --------------------------------------------------------------------------- absent / unseen classes


def test_absent_class_keeps_its_column():
    d, k = 10, 5
    head = NearestETFHead(d, k)
    head(*make_batch(30, d, k, seed=0))
    before = head.means.means.clone()
    f, y = make_batch(30, d, k, seed=1, classes=[0, 1, 3, 4])
    logits = head(f, y)
    after = head.means.means
    assert torch.equal(after[:, 2], before[:, 2])
    assert not torch.equal(after[:, 0], before[:, 0])
    assert torch.isfinite(logits).all() and etf_gram_error(head.weight.double()) < ETF_TOL


def test_never_seen_classes_get_the_mean_of_the_seen_columns():
    d, k, seen = 10, 6, [0, 2, 3]
    head = NearestETFHead(d, k)
    for s in range(2):
        logits = head(*make_batch(30, d, k, seed=s, classes=seen))
        assert torch.isfinite(logits).all() and etf_gram_error(head.weight.double()) < ETF_TOL
    A = head.means.estimate()
    unseen = [1, 4, 5]
    torch.testing.assert_close(A[:, unseen], A[:, seen].mean(1, keepdim=True).expand(d, 3))
    # after centering the unseen columns vanish and the seen ones are centred among themselves
    Ac = center_classes(A)
    torch.testing.assert_close(Ac[:, unseen], torch.zeros(d, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(Ac[:, seen], center_classes(A[:, seen]), rtol=0, atol=1e-6)
    # the placeholder never leaks: a class's first batch sets its column to B_t exactly (α = 1)
    f, y = make_batch(30, d, k, seed=5)
    head(f, y)
    h = head.transform(f)
    torch.testing.assert_close(head.means.means[:, 4], h[y == 4].mean(0) - h.mean(0))


def test_per_class_schedule_counts_the_batches_a_class_appeared_in():
    """Class 3 present in batches 1 and 3 only: A = (1·B_1 + 2·B_3)/3 (paper schedule, α_min = 0)."""
    d, k = 6, 4
    means = RunningClassMeans(d, k, alpha_min=0.0).double()
    B = []
    for s, classes in enumerate([[0, 1, 2, 3], [0, 1, 2], [0, 1, 2, 3]]):
        f, y = make_batch(16, d, k, seed=s, dtype=torch.float64, classes=classes)
        means.update(f, y)
        B.append(f[y == 3].mean(0) - f.mean(0) if 3 in classes else None)
    torch.testing.assert_close(means.means[:, 3], (B[0] + 2 * B[2]) / 3)
    assert means.class_steps.tolist() == [3, 3, 3, 2]


@pytest.mark.parametrize("later", [False, True])
def test_single_class_batch(later):
    d, k = 8, 4
    head = NearestETFHead(d, k)
    if later:
        head(*make_batch(20, d, k, seed=0))
    U_prev = head.U.clone()
    f = torch.randn(12, d, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.full((12,), 2)
    logits = head(f, y)
    F.cross_entropy(logits, y).backward()
    assert torch.isfinite(logits).all() and torch.isfinite(f.grad).all()
    assert etf_gram_error(head.weight.double()) < ETF_TOL
    if not later:
        # B_t = 0 for a one-class batch, so A = 0, H̄ = 0 and the solve returns the anchor U_0
        assert torch.equal(head.means.means, torch.zeros(d, k))
        torch.testing.assert_close(head.U, U_prev, rtol=0, atol=1e-6)
        torch.testing.assert_close(head.U, canonical_stiefel(d, k), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- running means


def _run_means(schedule, batches, **kw):
    means = RunningClassMeans(batches[0][0].shape[1], 3, schedule=schedule, **kw).double()
    B, mus = [], []
    for f, y in batches:
        means.update(f, y)
        mus.append(f.mean(0))
        B.append(torch.stack([f[y == c].mean(0) for c in range(3)], 1) - f.mean(0, keepdim=True).T)
    return means, B, mus


def test_paper_schedule_is_a_linearly_weighted_average():
    """α_t = 2/(t+1) (α_min = 0) gives A_T = Σ t B_t / Σ t; also for the running global mean."""
    batches = [make_batch(12, 5, 3, seed=s, dtype=torch.float64) for s in range(6)]
    means, B, mus = _run_means("paper", batches, alpha_min=0.0)
    w = torch.arange(1, 7, dtype=torch.float64)
    torch.testing.assert_close(means.means, sum(wt * b for wt, b in zip(w, B)) / w.sum())
    torch.testing.assert_close(means.global_mean, sum(wt * m for wt, m in zip(w, mus)) / w.sum())


def test_alpha_min_floors_the_step_size():
    batches = [make_batch(12, 5, 3, seed=s, dtype=torch.float64) for s in range(6)]
    means, B, _ = _run_means("paper", batches, alpha_min=0.5)
    expect = B[0]
    for t in range(2, 7):  # α_t = max(2/(t+1), 0.5) = 0.5 from t = 3 on
        a = max(2 / (t + 1), 0.5)
        expect = (1 - a) * expect + a * B[t - 1]
    torch.testing.assert_close(means.means, expect)


def test_cumulative_schedule_is_the_sample_weighted_mean():
    batches = [make_batch(n, 5, 3, seed=s, dtype=torch.float64) for s, n in enumerate([9, 14, 20])]
    means, B, _ = _run_means("cumulative", batches)
    counts = torch.stack([torch.bincount(y, minlength=3) for _, y in batches]).double()  # T×K
    expect = sum(b * n for b, n in zip(B, counts)) / counts.sum(0)
    torch.testing.assert_close(means.means, expect)
    all_f = torch.cat([f for f, _ in batches])
    gm = RunningMean(5, schedule="cumulative").double()
    for f, _ in batches:
        gm.update(f)
    torch.testing.assert_close(gm.mean, all_f.mean(0))


def test_ema_schedule_closed_form():
    a = 0.3
    batches = [make_batch(12, 5, 3, seed=s, dtype=torch.float64) for s in range(5)]
    means, B, _ = _run_means("ema", batches, ema_alpha=a)
    T = len(B)
    expect = (1 - a) ** (T - 1) * B[0] + sum(a * (1 - a) ** (T - t) * B[t - 1] for t in range(2, T + 1))
    torch.testing.assert_close(means.means, expect)


def test_gradient_reaches_only_the_current_batch_term():
    d, k = 5, 3
    means = RunningClassMeans(d, k).double()
    f1, y1 = make_batch(12, d, k, seed=0, dtype=torch.float64)
    f2, y2 = make_batch(12, d, k, seed=1, dtype=torch.float64)
    f1.requires_grad_()
    f2.requires_grad_()
    means.update(f1, y1)
    A2, _ = means.update(f2, y2)
    G = torch.randn(d, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g1, g2 = torch.autograd.grad((A2 * G).sum(), (f1, f2), allow_unused=True)
    assert g1 is None
    B2 = torch.stack([f2[y2 == c].mean(0) for c in range(k)], 1) - f2.mean(0, keepdim=True).T
    (gB,) = torch.autograd.grad((B2 * G).sum(), f2)
    torch.testing.assert_close(g2, (2 / 3) * gB)  # α_2 = 2/(2+1)


# --------------------------------------------------------------------------- all heads


def _train_steps(head, steps, d, k, seed=0, params=()):
    opt = torch.optim.SGD(list(params) + list(head.parameters()), lr=0.1) if list(head.parameters()) else None
    for s in range(steps):
        f, y = make_batch(24, d, k, seed=seed + s)
        loss = F.cross_entropy(head(f, y), y)
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.after_step()


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_continues_identically(method):
    d, k = 10, 4
    torch.manual_seed(0)
    head = build_head(method, d, k)
    _train_steps(head, 3, d, k)
    torch.manual_seed(123)  # a different init: the reload must carry everything
    kw = {"seed": 5} if method == "fixed-etf" else {}
    fresh = build_head(method, d, k, **kw)
    fresh.load_state_dict(head.state_dict())
    f, y = make_batch(24, d, k, seed=50)
    for h in (head, fresh):
        h.eval()
    assert torch.equal(head(f), fresh(f))
    for h in (head, fresh):
        h.train()
    outs = []
    for h in (head, fresh):
        x = f.clone().requires_grad_()
        logits = h(x, y)
        F.cross_entropy(logits, y).backward()
        outs.append((logits, x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    for (key, a), b in zip(head.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("method", METHODS)
def test_autocast_bfloat16_gives_float32_logits_and_exact_etf(method):
    torch.manual_seed(0)
    d, k = 24, 8
    backbone = nn.Linear(12, d)
    head = build_head(method, d, k)
    x = torch.randn(40, 12)
    y = torch.arange(40) % k
    reference = copy.deepcopy(head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = backbone(x)
        logits = head(f, y)
    assert f.dtype == torch.bfloat16 and logits.dtype == torch.float32
    # the head ignores autocast: same logits as float32 on the same (bf16-rounded) features
    assert torch.equal(logits, reference(f.float(), y))
    if method in ("fixed-etf", "nearest-etf", "nearest-etf-nograd"):
        assert etf_gram_error(head.weight.double()) < ETF_TOL


@pytest.mark.parametrize("method", METHODS)
def test_digits_mlp_reaches_high_training_accuracy(method):
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    head = build_head(method, 32, 10)
    opt = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = F.cross_entropy(head(backbone(x[idx]), y[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            head.after_step()
    head.eval()
    with torch.no_grad():
        acc = (head(backbone(x)).argmax(1) == y).float().mean().item()
    assert acc > 0.8, f"{method}: training accuracy {acc:.3f}"


def test_standard_head_rows_unit_norm_after_step_and_plain_is_linear():
    torch.manual_seed(0)
    head = StandardHead(8, 3)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(3))
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    f, y = make_batch(16, 8, 3, seed=0)
    F.cross_entropy(head(f, y), y).backward()
    opt.step()
    assert (head.weight.norm(dim=1) - 1).abs().max() > 1e-3  # the step leaves the sphere ...
    head.after_step()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(3))  # ... after_step restores it
    plain = build_head("standard-plain", 8, 3)
    torch.testing.assert_close(plain(f), f @ plain.weight.T + plain.bias)
    torch.testing.assert_close(head(f), 5.0 * F.normalize(f) @ head.weight.T + head.bias)


def test_fixed_etf_head_rotations():
    canon = FixedETFHead(12, 4, rotation="canonical")
    torch.testing.assert_close(canon.weight[:, 4:], torch.zeros(4, 8))  # axis-aligned
    r0, r0b, r1 = (FixedETFHead(12, 4, seed=s) for s in (0, 0, 1))
    assert torch.equal(r0.weight, r0b.weight) and not torch.allclose(r0.weight, r1.weight)
    for h in (canon, r0, r1):
        assert etf_gram_error(h.weight.double()) < ETF_TOL


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NearestETFHead(8, 3)(torch.randn(4, 8)), "needs targets"),
        (lambda: NearestETFHead(8, 3)(torch.randn(4, 8), torch.tensor([0, 1, 3, 0])), r"\[0, 3\)"),
        (lambda: FixedETFHead(8, 3)(torch.randn(4, 8), torch.tensor([0, -1, 2, 0])), r"\[0, 3\)"),
        (lambda: StandardHead(8, 3)(torch.randn(4, 8), torch.tensor([0, 1, 2, 5])), r"\[0, 3\)"),
        (lambda: NearestETFHead(8, 3)(torch.randn(4, 7), torch.zeros(4, dtype=torch.long)), "shape"),
        (lambda: StandardHead(8, 3)(torch.randn(4, 9)), "feature_dim=9"),
        (lambda: NearestETFHead(8, 3)(torch.randn(4, 8), torch.zeros(4)), "integer"),
        (lambda: NearestETFHead(4, 5), "feature_dim >= num_classes"),
        (lambda: FixedETFHead(4, 5), "feature_dim >= num_classes"),
        (lambda: NearestETFHead(4, 1), "num_classes must be an integer >= 2"),
        (lambda: StandardHead(4, 1), "num_classes must be an integer >= 2"),
        (lambda: NearestETFHead(8, 3, mean_schedule="linear"), "schedule"),
        (lambda: NearestETFHead(8, 3, solver="lbfgs"), "solver"),
        (lambda: FixedETFHead(8, 3, rotation="axis"), "rotation"),
        (lambda: StandardHead(8, 3, temperature=0.0), "temperature"),
        (lambda: build_head("etf", 8, 3), "unknown head method"),
        (lambda: build_head("standard", 8, 3, delta=1e-3), "does not take"),
    ],
)
def test_errors_say_what_is_wrong(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize("method", METHODS)
def test_targets_of_any_integer_dtype_are_accepted_and_mean_the_same(method, dtype):
    """The rule the message states: any integer dtype (as ``nc_metrics`` takes); the same logits and state as int64."""
    d, k = 8, 3
    head = build_head(method, d, k)
    twin = copy.deepcopy(head)
    f, y = make_batch(12, d, k, seed=0)
    assert torch.equal(head(f, y.to(dtype)), twin(f, y))
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), twin.state_dict().values())
               if torch.is_tensor(a))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_non_integer_targets_are_refused_with_the_rule(dtype):
    with pytest.raises(ValueError, match=r"integer dtype \(any: int64, int32, uint8"):
        NearestETFHead(8, 3)(torch.randn(4, 8), torch.zeros(4, dtype=dtype))


def test_fixed_and_standard_heads_accept_no_targets_in_training():
    f = torch.randn(6, 8)
    for method in ("standard", "standard-plain", "fixed-etf"):
        assert build_head(method, 8, 3)(f).shape == (6, 3)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    d, k = 32, 10
    torch.manual_seed(0)
    cpu = build_head(method, d, k)
    gpu = copy.deepcopy(cpu).to("cuda")
    for s in range(3):
        f, y = make_batch(64, d, k, seed=s)
        torch.testing.assert_close(gpu(f.cuda(), y.cuda()).cpu(), cpu(f, y), rtol=1e-4, atol=1e-4)
    for (key, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert b.is_cuda, key
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_training_step_of_the_head_does_not_sync(method, monkeypatch):
    """The head's own work (means, all-reduce bookkeeping, logits, backward) never waits for the
    device. The solve is replaced by a sync-free stand-in: the SVD inside nearest_etf is solve.py's."""
    import ncguide.heads

    monkeypatch.setattr(ncguide.heads, "nearest_etf", lambda H, U_prev, delta, **kw: U_prev + 0 * H)
    head = build_head(method, 32, 10).to("cuda")
    f, y = make_batch(64, 32, 10, seed=0)
    f, y = f.cuda().requires_grad_(), y.cuda()
    head(f, y)  # the first call checks the label range once (one sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(head(f, y), y, reduction="sum").backward()
        head.after_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_float64_features_keep_a_float64_anchor():
    """With float64 features the solve runs in float64; the stored U_prev must not be rounded to float32."""
    torch.manual_seed(0)
    head = NearestETFHead(12, 4).double()
    h = torch.randn(16, 12, dtype=torch.float64)
    y = torch.arange(16) % 4
    head(h, y)
    assert head.U.dtype == torch.float64
    eye = torch.eye(4, dtype=torch.float64)
    assert (head.U.T @ head.U - eye).abs().max() <= orth_tol(head.U)  # float64 SVD: orthonormal to rounding
    state = head.state_dict()
    fresh = NearestETFHead(12, 4).double()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(h, y), head(h, y), atol=0, rtol=0)


# --------------------------------------------------------------------------- non-finite and extreme features

STATEFUL = ("fixed-etf", "nearest-etf", "nearest-etf-nograd")


def _poison(f, y, where):
    """A copy of the batch with NaN or inf in one place: one entry of class 1, or a whole row."""
    f = f.clone()
    row = int(torch.nonzero(y == 1)[0])
    if where == "nan-one-class":
        f[row, 0] = math.nan
    elif where == "inf-row":
        f[row] = math.inf
    else:  # "-inf-entry"
        f[row, 3] = -math.inf
    return f


@pytest.mark.parametrize("where", ["nan-one-class", "inf-row", "-inf-entry"])
@pytest.mark.parametrize("method,kw", [(m, {}) for m in STATEFUL] + [
    ("nearest-etf", {"solver": "polar-ns"}), ("nearest-etf", {"solver": "polar"}),
    ("nearest-etf", {"mean_schedule": "cumulative"}),
])
def test_non_finite_batch_is_rejected_and_leaves_the_head_unchanged(method, kw, where):
    """On CPU a batch with NaN/inf features raises ValueError and changes no state: afterwards the head
    (eval logits, state_dict, the next training steps) is bitwise the twin that never saw the batch."""
    d, k = 10, 4
    head = build_head(method, d, k, **kw)
    for s in range(3):
        head(*make_batch(32, d, k, seed=s))
    twin = copy.deepcopy(head)
    before = copy.deepcopy(head.state_dict())
    f, y = make_batch(32, d, k, seed=10)
    with pytest.raises(ValueError, match=r"NaN or inf.*unchanged"):
        head(_poison(f, y, where), y)
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), key
    reloaded = build_head(method, d, k, **kw)
    reloaded.load_state_dict(head.state_dict())
    for model in (head, twin, reloaded):
        model.eval()
    f_eval, _ = make_batch(16, d, k, seed=11)
    assert torch.isfinite(head(f_eval)).all() and torch.isfinite(head.bias).all()
    assert torch.equal(head(f_eval), twin(f_eval)) and torch.equal(reloaded(f_eval), twin(f_eval))
    for model in (head, twin, reloaded):
        model.train()
    for s in (12, 13):
        batch = make_batch(32, d, k, seed=s)
        out = head(*batch)
        assert torch.equal(out, twin(*batch)) and torch.equal(reloaded(*batch), out)


def test_standard_head_has_no_state_and_passes_non_finite_batches_through():
    """StandardHead keeps no running mean: a NaN row gives NaN logits in that row only (no error)."""
    head = build_head("standard", 6, 3)
    f, y = make_batch(5, 6, 3, seed=0)
    f[1, 2] = math.nan
    logits = head(f, y)
    assert torch.isnan(logits[1]).all() and torch.isfinite(logits[[0, 2, 3, 4]]).all()


@pytest.mark.parametrize("dtype,scales", [
    (torch.float32, [1e20, 1e-30, 1e38, 1e-34]), (torch.float64, [1e300, 1e-300]),
])
def test_transform_is_invariant_to_huge_and_tiny_feature_scales(dtype, scales):
    """h̃ = τ h/‖h‖ is scale-free: ‖h‖ (or its square) may overflow or underflow, h̃ must not."""
    head = NearestETFHead(16, 4)
    f, _ = make_batch(8, 16, 4, seed=0, dtype=dtype)
    f[0] = 0.0  # a zero row stays zero
    ref = head.transform(f)
    for scale in scales:
        per_row = scale * torch.logspace(0, -3, 8, dtype=dtype).unsqueeze(1)  # different scale per row (normal)
        torch.testing.assert_close(head.transform(f * per_row), ref, rtol=1e-6, atol=0)
    assert torch.equal(ref[0], torch.zeros(16, dtype=dtype))


@pytest.mark.parametrize("method", ["standard", "fixed-etf", "nearest-etf"])
@pytest.mark.parametrize("scale", [1e20, 1e-30, 2.0**66, 2.0**-100])
def test_training_step_is_invariant_to_the_feature_scale(method, scale):
    """Same logits, same state, gradient scaled by 1/scale, for float32 features ×1e20 (‖h‖² overflows)
    and ×1e-30 (‖h‖² underflows): bitwise for a power of two (the scaling is then exact), else up to the
    rounding of h·scale (U: the solve amplifies a 1e-7 change of h̃ to ~1e-5 in float32)."""
    d, k = 12, 4
    torch.manual_seed(0)
    head = build_head(method, d, k)
    twin = copy.deepcopy(head)
    exact = math.frexp(scale)[0] == 0.5
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-5)
    for s in range(3):
        f, y = make_batch(24, d, k, seed=s)
        x, x_big = f.clone().requires_grad_(), (f * scale).requires_grad_()
        logits, logits_big = twin(x, y), head(x_big, y)
        torch.testing.assert_close(logits_big, logits, **tol)
        F.cross_entropy(logits, y).backward()
        F.cross_entropy(logits_big, y).backward()
        torch.testing.assert_close(x_big.grad * scale, x.grad, **(tol if exact else dict(rtol=1e-3, atol=1e-5)))
    for (key, a), b in zip(twin.state_dict().items(), head.state_dict().values()):
        torch.testing.assert_close(b, a, **(tol if exact else dict(rtol=1e-4, atol=1e-4)), msg=key)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method,kw", [("fixed-etf", {}), ("nearest-etf", {}), ("nearest-etf", {"solver": "polar-ns"}),
                                       ("nearest-etf", {"solver": "warm"}), ("nearest-etf", {"freeze_after": 5})])
def test_cuda_non_finite_batch_is_rejected_on_the_device(method, kw):
    """CUDA, default: no host read of the flag (sync-free where the solver is: fixed-etf, polar-ns), every
    buffer (the update count and the warm solver's state included) stays bitwise as it was, the logits are
    NaN; the next batches continue as if it never came. ``check_finite = True`` raises as on CPU."""
    d, k = 32, 10
    head = build_head(method, d, k, **kw).to("cuda")
    for s in range(3):
        head(*(t.cuda() for t in make_batch(64, d, k, seed=s)))
    twin, before = copy.deepcopy(head), _tensor_state(head)
    f, y = make_batch(64, d, k, seed=10)
    bad, y = _poison(f, y, "nan-one-class").cuda(), y.cuda()
    torch.cuda.synchronize()
    if method == "fixed-etf" or kw.get("solver") == "polar-ns":
        torch.cuda.set_sync_debug_mode("error")
    try:
        logits = head(bad, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not torch.isfinite(logits).all()
    for key, value in _tensor_state(head).items():
        assert torch.equal(value, before[key]), key
    head.check_finite = True
    with pytest.raises(NonFiniteFeaturesError, match="unchanged"):
        head(bad, y)
    for key, value in _tensor_state(head).items():
        assert torch.equal(value, before[key]), key
    for s in (11, 12):
        batch = [t.cuda() for t in make_batch(64, d, k, seed=s)]
        torch.testing.assert_close(head(*batch), twin(*batch), rtol=1e-5, atol=1e-5)  # atomic adds: not bitwise


# --------------------------------------------------------------------------- edges: sizes, empty batches, dtypes


@pytest.mark.parametrize("make", [
    lambda d, k: NearestETFHead(d, k), lambda d, k: FixedETFHead(d, k), lambda d, k: StandardHead(d, k),
    *[lambda d, k, m=m: build_head(m, d, k) for m in METHODS],
])
@pytest.mark.parametrize("name,bad", [
    ("num_classes", 4.5), ("num_classes", 4.0), ("num_classes", True), ("num_classes", "4"),
    ("feature_dim", 16.5), ("feature_dim", False), ("feature_dim", None),
])
def test_sizes_must_be_integers(make, name, bad):
    """A non-integer size (a float, even a whole one, a bool, a string) is refused with one ValueError naming it,
    not a failure deep inside torch."""
    sizes = {"feature_dim": 16, "num_classes": 4, name: bad}
    with pytest.raises(ValueError, match=name):
        make(sizes["feature_dim"], sizes["num_classes"])


def test_numpy_integer_sizes_are_accepted():
    np = pytest.importorskip("numpy")
    head = NearestETFHead(np.int64(16), np.int32(4))
    assert (head.feature_dim, head.num_classes) == (16, 4) and type(head.num_classes) is int


# every option the heads declare as bool or float, with values that are neither, though truthy or numeric in Python
NOT_BOOL = ["off", "no", 1, 0, 0.5, None, torch.tensor(True)]
NOT_REAL = [True, False, "1", "0.5", None, [1.0], torch.tensor([1.0, 2.0])]


@pytest.mark.parametrize("method", METHODS)
def test_every_bool_and_float_option_of_every_head_is_type_checked(method):
    """From the constructors' signatures: each bool option refuses what is not a bool (``"off"`` is a true string,
    ``0.5`` a true number: read by truthiness they would do the opposite of what was meant), each float option
    refuses bools and text, with one ValueError naming the option; the implicit-gradient switch of the nearest-ETF
    head (fixed per method by build_head) too."""
    options = head_option_types(method)
    checked = {n: tp for n, tp in options.items() if tp in (bool, float)}
    assert checked, method
    for name, tp in checked.items():
        for bad in NOT_BOOL if tp is bool else NOT_REAL:
            with pytest.raises(ValueError, match=f"^{name} must be") as info:
                build_head(method, 16, 4, **{name: bad})
            assert len(str(info.value).splitlines()) == 1
    if method.startswith("nearest"):
        for bad in NOT_BOOL:
            with pytest.raises(ValueError, match="^implicit_grad must be True or False"):
                NearestETFHead(16, 4, implicit_grad=bad)


def test_numbers_of_numpy_and_torch_are_read_as_python_values():
    np = pytest.importorskip("numpy")
    head = NearestETFHead(16, 4, temperature=torch.tensor(5.0), delta=np.float32(0.5), implicit_grad=np.bool_(False),
                          alpha_min=np.float64(0.1), sync_distributed=np.bool_(True))
    assert (head.temperature, head.delta, head.implicit_grad, head.means.alpha_min, head.means.sync) == \
        (5.0, 0.5, False, 0.1, True)
    assert {type(head.temperature), type(head.delta), type(head.implicit_grad)} == {float, bool}
    with pytest.raises(ValueError, match="^seed must be an integer"):
        FixedETFHead(16, 4, seed=True)


EDGE_HEADS = [(m, {}) for m in STATEFUL] + [
    ("nearest-etf", {"solver": "warm"}), ("nearest-etf", {"solver": "polar-ns"}), ("nearest-etf", {"freeze_after": 5}),
]


def _train_both(heads, batch):
    """One training step (forward and backward through the solve) of each head on the same batch; the logits
    and feature gradients, which must be equal."""
    f, y = batch
    out = []
    for head in heads:
        x = f.clone().requires_grad_()
        logits = head(x, y)
        F.cross_entropy(logits, y).backward()
        out.append((logits, x.grad))
    return out


def _tensor_state(head) -> dict:
    """The head's tensors (the warm solver's host-side policy, ``_extra_state``, is not a tensor)."""
    return {key: value.clone() for key, value in head.state_dict().items() if torch.is_tensor(value)}


@pytest.mark.parametrize("method,kw", EDGE_HEADS)
def test_an_empty_training_batch_is_a_no_op(method, kw):
    """N = 0: no state changes (not even U, nor the warm solver's), it is not counted as an update, and the
    head then continues bitwise as a twin that never saw it."""
    d, k = 8, 3
    head = build_head(method, d, k, **kw)
    for s in range(3):
        head(*make_batch(12, d, k, seed=s))
    twin, before = copy.deepcopy(head), _tensor_state(head)
    logits = head(torch.zeros(0, d, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert logits.shape == (0, k)
    for key, value in _tensor_state(head).items():
        assert torch.equal(value, before[key]), key
    for s in (5, 6):
        (a, ga), (b, gb) = _train_both((head, twin), make_batch(12, d, k, seed=s))
        assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("check_finite", [True, False])
def test_an_empty_batch_does_not_move_the_freeze_point(check_finite):
    d, k = 8, 3
    head, twin = NearestETFHead(d, k, freeze_after=2), NearestETFHead(d, k, freeze_after=2)
    head.check_finite = twin.check_finite = check_finite
    head(*make_batch(12, d, k, seed=0))
    twin(*make_batch(12, d, k, seed=0))
    head(torch.zeros(0, d), torch.zeros(0, dtype=torch.long))
    assert not head.is_frozen and int(head.updates) == 1
    head(*make_batch(12, d, k, seed=1))
    twin(*make_batch(12, d, k, seed=1))
    assert head.is_frozen and int(head.updates) == 2 and torch.equal(head.U, twin.U)


@pytest.mark.parametrize("solver", ["auto", "polar", "warm"])
def test_a_float64_trained_head_round_trips_in_float64(solver):
    """A head built in float32 and trained on float64 features solves in float64 and keeps a float64 U; loading its
    state into a freshly built head gives back that float64 U (not a float32 rounding), so the continuations are
    bitwise equal."""
    d, k = 12, 4
    head = NearestETFHead(d, k, solver=solver)
    for s in range(3):
        head(*make_batch(24, d, k, seed=s, dtype=torch.float64))
    assert head.U.dtype == torch.float64
    fresh = NearestETFHead(d, k, solver=solver)
    fresh.load_state_dict(head.state_dict())
    assert fresh.U.dtype == torch.float64 and torch.equal(fresh.U, head.U)
    for s in (7, 8):
        f, y = make_batch(24, d, k, seed=s, dtype=torch.float64)
        assert torch.equal(fresh(f, y), head(f, y))
    fresh.eval()
    head.eval()
    assert torch.equal(fresh(f), head(f))


@pytest.mark.parametrize("method,kw", EDGE_HEADS)
def test_a_float64_head_loads_into_a_float32_head_in_float64(method, kw):
    """``head.double()`` trained, then loaded into a head built as usual (float32): every buffer — ``U``, the running
    means, the fixed weight — keeps the dtype it was saved in, so training and evaluation continue bitwise."""
    d, k = 16, 4
    head = build_head(method, d, k, **kw).double()
    for s in range(3):
        _train_both((head,), make_batch(24, d, k, seed=s, dtype=torch.float64))
    fresh = build_head(method, d, k, **kw)
    fresh.load_state_dict(head.state_dict())
    saved = {name: b.dtype for name, b in head.named_buffers()}
    assert {name: b.dtype for name, b in fresh.named_buffers()} == saved
    assert torch.float64 in saved.values()
    for s in (7, 8):
        (a, ga), (b, gb) = _train_both((head, fresh), make_batch(24, d, k, seed=s, dtype=torch.float64))
        assert torch.equal(a, b) and torch.equal(ga, gb)
    head.eval()
    fresh.eval()
    f, _ = make_batch(24, d, k, seed=9, dtype=torch.float64)
    assert torch.equal(fresh(f), head(f))


@pytest.mark.parametrize("method,kw", EDGE_HEADS)
def test_without_the_host_check_a_rejected_batch_changes_no_buffer_and_is_not_counted(method, kw):
    """check_finite = False runs the CUDA default's code path on CPU: the batch is rejected by device-side selects
    only, and every buffer — the update count and the warm solver's V, X, Y and counters included — keeps its
    value; a rejected batch does not move the freeze point."""
    d, k = 10, 4
    head = build_head(method, d, k, **kw)
    head.check_finite = False
    for s in range(3):
        head(*make_batch(32, d, k, seed=s))
    twin, before = copy.deepcopy(head), _tensor_state(head)
    f, y = make_batch(32, d, k, seed=10)
    assert torch.isnan(head(_poison(f, y, "nan-one-class"), y)).any()
    for key, value in _tensor_state(head).items():
        assert torch.equal(value, before[key]), key
    for s in (12, 13):
        (a, ga), (b, gb) = _train_both((head, twin), make_batch(32, d, k, seed=s))
        assert torch.equal(a, b) and torch.equal(ga, gb)
    if "freeze_after" in kw:  # 3 + 2 accepted updates: frozen now, as the twin is, not one batch early
        assert head.is_frozen and twin.is_frozen and torch.equal(head.U, twin.U)

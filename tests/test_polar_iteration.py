"""The matrix-product polar solver (``solver="polar-ns"``): its polynomials are minimax-optimal, their
composition reaches 1 from the designed lower bound, the iteration equals the SVD's polar factor, the
Lyapunov/sign backward equals the SVD form of the implicit derivative, and nothing reads the device."""

import math

import pytest
import torch

from host_reads import HostReads
from ncguide import NearestETFHead, etf_weight, nearest_etf, random_stiefel
from ncguide import polar_iteration as polar_iteration_module
from ncguide.etf import center_classes
from ncguide.polar_iteration import (
    best_odd_quintic,
    lyapunov_and_inverse,
    polar_iteration,
    polar_iteration_backward,
    polynomial_schedule,
)
from ncguide.solve import _polar_backward, polar_target
from tolerances import orth_tol, polar_grad_rtol, polar_tol, sum_tol, unit_roundoff


def quintic(coeffs, x):
    a, b, c = coeffs
    return a * x + b * x**3 + c * x**5


def compose(steps, x):
    for coeffs in steps:
        x = quintic(coeffs, x)
    return x


def with_singular_values(d, k, sigma, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = random_stiefel(d, k, generator=g, dtype=torch.float64)
    B = random_stiefel(k, k, generator=g, dtype=torch.float64)
    return ((A * sigma) @ B.T).to(dtype), (A @ B.T).to(dtype)


@pytest.mark.parametrize("lower,upper", [(1e-4, 1.0), (1e-2, 1.5), (0.3, 1.9), (0.9, 1.1)])
def test_quintic_is_the_minimax_approximation_of_one(lower, upper):
    a, b, c, err = best_odd_quintic(lower, upper)
    x = torch.linspace(lower, upper, 200_001, dtype=torch.float64)
    dev = 1 - quintic((a, b, c), x)
    assert abs(dev.abs().max().item() - err) < 1e-9 * max(err, 1e-3)
    # Chebyshev alternation: the error reaches ±E with alternating signs at four points, so no other odd
    # quintic does better (de la Vallée Poussin); check that random perturbations indeed do worse.
    signs = [1, -1, 1, -1]
    hits = [(x[(dev - s * err).abs() < 1e-7 * max(err, 1e-3)]).numel() > 0 for s in signs]
    assert all(hits)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        da, db, dc = (1e-3 * torch.randn(3, generator=g, dtype=torch.float64)).tolist()
        assert (1 - quintic((a + da, b + db, c + dc), x)).abs().max() >= err


@pytest.mark.parametrize("lower", [1e-6, 1e-5, 1e-4, 1e-2, 0.5])
@pytest.mark.parametrize("tol", [16 * torch.finfo(torch.float32).eps, 16 * torch.finfo(torch.float64).eps])
def test_schedule_takes_the_interval_to_one(lower, tol):
    steps = polynomial_schedule(lower, tol)
    x = torch.logspace(math.log10(lower), 0, 100_001, dtype=torch.float64)
    assert (compose(steps, x) - 1).abs().max() <= tol
    # and below the designed bound the composition still increases (it never sends a value to 0 or below)
    y = compose(steps, torch.tensor([lower / 10, lower / 3], dtype=torch.float64))
    assert 0 < y[0] < y[1] <= 1 + tol


def test_schedule_length_grows_like_log_of_the_bound():
    lengths = [len(polynomial_schedule(10.0**-e, 1e-14)) for e in range(1, 8)]
    assert lengths == sorted(lengths) and lengths[-1] <= 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d,k", [(2, 2), (7, 7), (64, 10), (300, 100)])
def test_iteration_equals_the_svd_polar_factor(d, k, dtype):
    """In float32 the quintics' large coefficients cost accuracy (relative Frobenius error about 3e-5 at
    K = 100 and 1e-4 at K = 1000, against 1e-6 for a float32 SVD), which is why ``nearest_etf`` runs the
    iteration in float64, where it is as accurate as a backward-stable decomposition (``polar_tol``)."""
    # singular values log-spaced over the whole designed range, top one equal to the Gram scale's bound
    sigma = torch.logspace(0, -4, k, dtype=torch.float64)
    Z, U_true = with_singular_values(d, k, sigma, dtype)
    U, s = polar_iteration(Z, polynomial_schedule(1e-5, 16 * torch.finfo(dtype).eps))
    assert (s >= sigma[0].to(dtype) * (1 - 1e-6)).all()
    err = torch.linalg.matrix_norm(U.double() - U_true.double())
    orth = (U.mT @ U - torch.eye(k, dtype=dtype)).abs().max()
    if dtype == torch.float32:
        assert err / math.sqrt(k) < 3e-4 and orth < 2e-6  # orthonormal to rounding, whatever the accuracy
    else:
        assert err <= polar_tol(Z) and orth <= orth_tol(Z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iteration_is_stable_over_many_random_problems(dtype):
    """Regression: a minimax quintic rises steeply past its design interval; without the margin a value
    rounded above it grew step after step to inf (seen at K = 2 in float32)."""
    g = torch.Generator().manual_seed(0)
    steps = polynomial_schedule(1e-5, 16 * torch.finfo(dtype).eps)
    for k in (2, 3, 5):
        H = torch.randn(200, k, k, generator=g, dtype=torch.float64)
        H = H / torch.linalg.matrix_norm(H, keepdim=True)
        U_prev = torch.linalg.qr(torch.randn(200, k, k, generator=g, dtype=torch.float64))[0]
        Z = center_classes(H) / math.sqrt(k - 1) + 0.5e-3 * U_prev
        U, _ = polar_iteration(Z.to(dtype), steps)
        err = (U.mT @ U - torch.eye(k, dtype=dtype)).abs().amax((-2, -1))
        tol = 1e-5 if dtype == torch.float32 else orth_tol(Z)  # orthonormal to rounding once converged
        assert torch.isfinite(U).all()
        # Square anchors can cancel the means (σ_min far below δ/2): a few problems sit below the designed
        # bound (handled by nearest_etf, next test). All others converge.
        assert (err < tol).double().mean() > 0.97


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_problems_below_the_design_bound_keep_the_anchor_or_use_the_svd(dtype):
    """At d = K the means can cancel the anchor: σ_min(Z) far below δ/2 and the fixed step count falls
    short. Without a sync nearest_etf keeps U_prev for exactly those problems; check_finite=True solves
    the batch by the SVD. Either way U is orthonormal."""
    g = torch.Generator().manual_seed(0)
    k, n = 3, 2000
    H = torch.randn(n, k, k, generator=g, dtype=torch.float64)
    H = (H / torch.linalg.matrix_norm(H, keepdim=True)).to(dtype)
    U_prev = torch.linalg.qr(torch.randn(n, k, k, generator=g, dtype=torch.float64))[0].to(dtype)
    eye = torch.eye(k, dtype=dtype)
    exact = nearest_etf(H, U_prev, solver="polar")
    fast = nearest_etf(H, U_prev, solver="polar-ns", check_finite=False)
    kept = (fast == U_prev).all(-1).all(-1)
    assert 0 < kept.sum() < n // 20  # the case occurs, and rarely
    assert (fast.mT @ fast - eye).abs().max() < 1e-6
    Z = (center_classes(H) / math.sqrt(k - 1) + 0.5e-3 * U_prev).double()
    tol = 1e-5 if dtype == torch.float32 else 2 * polar_tol(Z[~kept])  # both routes, at the worst κ converged
    assert (fast[~kept] - exact[~kept]).abs().max() <= tol
    checked = nearest_etf(H, U_prev, solver="polar-ns")
    torch.testing.assert_close(checked, exact, atol=1e-5 if dtype == torch.float32 else 2 * polar_tol(Z), rtol=0)


def test_head_with_d_equal_k_always_holds_an_orthonormal_u():
    """The heads call without checks (no sync); at d = K a few solves fall below the design bound."""
    kept = 0
    for seed in range(150):
        torch.manual_seed(seed)
        head = NearestETFHead(2, 2, solver="polar-ns")
        for _ in range(3):
            before = head.U.clone()
            head(torch.randn(16, 2), torch.arange(16) % 2)
            kept += int(torch.equal(head.U, before))
            assert (head.U.mT @ head.U - torch.eye(2)).abs().max() < 1e-6
            head.after_step()
    assert kept > 0  # the fallback was exercised


@pytest.mark.parametrize("d,k", [(12, 12), (40, 10), (300, 100)])
def test_lyapunov_solution_and_inverse(d, k):
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    lam = torch.logspace(0, -4, k, dtype=torch.float64)
    P = (Q * lam) @ Q.T
    X = torch.randn(k, k, generator=g, dtype=torch.float64)
    C = X - X.T
    omega, P_inv = lyapunov_and_inverse(P, C, torch.tensor(1.0, dtype=torch.float64), polynomial_schedule(1e-5))
    # independent solution in P's eigenbasis: Ω' = C' / (λ_i + λ_j); the equation's condition number is κ(P)
    ref = Q @ ((Q.T @ C @ Q) / (lam[:, None] + lam[None, :])) @ Q.T
    kappa, n = float(lam[0] / lam[-1]), len(polynomial_schedule(1e-5))  # n steps of k-term products
    torch.testing.assert_close(omega, ref, atol=sum_tol(k, scale=kappa * ref.abs().max().item()), rtol=0)
    residual = torch.linalg.matrix_norm(P @ omega + omega @ P - C)
    assert residual <= sum_tol(n * k) * torch.linalg.matrix_norm(P) * torch.linalg.matrix_norm(omega)  # backward stable
    torch.testing.assert_close(P_inv @ P, torch.eye(k, dtype=torch.float64), atol=sum_tol(n * k, scale=kappa), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d,k", [(5, 2), (20, 5), (64, 10), (256, 100)])
def test_backward_equals_the_svd_form_of_the_implicit_derivative(d, k, dtype):
    g = torch.Generator().manual_seed(2)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    H = H / torch.linalg.matrix_norm(H)
    U_prev = random_stiefel(d, k, generator=g, dtype=torch.float64)
    Z = center_classes(H) / math.sqrt(k - 1) + 0.5e-3 * U_prev
    G = torch.randn(d, k, generator=g, dtype=torch.float64)
    A, S, Bh = torch.linalg.svd(Z, full_matrices=False)
    ref = _polar_backward(A, S, Bh, G)
    steps = polynomial_schedule(1e-5, 16 * torch.finfo(dtype).eps)
    U, s = polar_iteration(Z.to(dtype), steps)
    got = polar_iteration_backward(U, Z.to(dtype), s, G.to(dtype), steps)
    tol = 3e-4 if dtype == torch.float32 else 2 * polar_grad_rtol(Z)  # both computations of the gradient
    assert torch.linalg.matrix_norm(got.double() - ref) / torch.linalg.matrix_norm(ref) <= tol


@pytest.mark.parametrize("d,k", [(4, 2), (6, 3), (7, 5)])
def test_gradcheck_through_the_iteration(d, k):
    g = torch.Generator().manual_seed(3)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    H = (H / torch.linalg.matrix_norm(H)).requires_grad_(True)
    U_prev = random_stiefel(d, k, generator=g, dtype=torch.float64)

    def f(h):
        return etf_weight(nearest_etf(h, U_prev, 1e-2, solver="polar-ns", check_finite=False))

    assert torch.autograd.gradcheck(f, (H,), eps=1e-6, atol=1e-6)


def test_forward_and_backward_use_matrix_products_only():
    """The property the solver exists for: no decomposition and no device-to-host read, so on a GPU
    nothing waits (the CUDA test in test_heads checks it with torch.cuda's sync detector)."""
    H = torch.randn(64, 10, dtype=torch.float32)
    H = (H / torch.linalg.matrix_norm(H)).requires_grad_(True)
    U_prev = random_stiefel(64, 10)
    with HostReads() as mode:
        U = nearest_etf(H, U_prev, solver="polar-ns", check_finite=False)
        (U * torch.randn_like(U)).sum().backward()
    assert mode.seen == [], mode.seen
    for sync in (  # the detector works
        lambda: nearest_etf(H.detach(), U_prev, solver="polar", check_finite=False),
        lambda: H[H > 0],
        lambda: float(H.detach().sum()),
    ):
        with HostReads() as mode:
            sync()
        assert mode.seen


def test_delta_zero_uses_the_svd():
    H = torch.randn(10, 4, dtype=torch.float64)
    U_prev = random_stiefel(10, 4, dtype=torch.float64)
    U = nearest_etf(H, U_prev, 0.0, solver="polar-ns")
    torch.testing.assert_close(U, nearest_etf(H, U_prev, 0.0, solver="polar"), atol=0, rtol=0)


def test_head_with_the_iterative_solver_follows_the_exact_head():
    """30 training steps of a float32 head with ``polar-ns`` track a float32 head that solves the same problems
    exactly (``polar-gram``: a float64 eigensolver). Both keep bitwise the same running means, so their ``U``
    differ only by the two routes' float64 errors (``polar_tol``) and the rounding of each ``U`` to float32
    (``‖·‖_F <= u sqrt(K)`` each), carried to the next step by the anchor: ``ΔZ = (δ/2) ΔU_prev``, and to first
    order ``‖ΔU‖_F <= ‖ΔZ‖_F/σ_min(Z)``. The logits ``W (h̃ - μ_B)`` then differ by at most ``‖ΔW‖_F 2τ``, with
    ``‖ΔW‖_F <= sqrt(K/(K-1)) ‖ΔU‖_F``, plus the float32 rounding of the two products."""
    d, k = 32, 8
    ns, exact = NearestETFHead(d, k, solver="polar-ns"), NearestETFHead(d, k, solver="polar-gram")
    g = torch.Generator().manual_seed(5)
    u32, bound = unit_roundoff(torch.float32), 0.0
    for _ in range(30):
        f = torch.randn(64, d, generator=g)
        y = torch.randint(0, k, (64,), generator=g)
        U_prev = exact.U.double()
        logits_ns, logits = ns(f, y), exact(f, y)
        assert torch.equal(ns.means.means, exact.means.means)
        A = exact.means.estimate().double()  # the estimate both heads solved with
        Z = polar_target(A / torch.linalg.matrix_norm(A), U_prev, exact.delta)
        gain = 0.5 * exact.delta / float(torch.linalg.svdvals(Z)[-1])
        bound = gain * bound + polar_tol(Z) + polar_tol(Z, gram=True) + 2 * u32 * math.sqrt(k)
        assert torch.linalg.matrix_norm((ns.U - exact.U).double()) <= bound
        logit_tol = math.sqrt(k / (k - 1)) * bound * 2 * ns.temperature + 2 * sum_tol(d, 2 * ns.temperature,
                                                                                       torch.float32)
        torch.testing.assert_close(logits_ns, logits, atol=logit_tol, rtol=0)
        ns.after_step()
        exact.after_step()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_with_the_iterative_solver_does_not_sync():
    """With ``solver="polar-ns"`` the whole head step, solve and implicit backward included, never waits
    for the device (the default solvers' eigen/SVD kernels do)."""
    import torch.nn.functional as F

    head = NearestETFHead(512, 100, solver="polar-ns").to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    f = torch.randn(256, 512, device="cuda", generator=g).requires_grad_()
    y = torch.arange(256, device="cuda") % 100
    head(f, y)  # the first call checks the label range once (one sync)
    head.after_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(head(f, y), y).backward()
        head.after_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (head.U.mT @ head.U - torch.eye(100, device="cuda")).abs().max() < 1e-5


def test_compiles_as_one_graph():
    """No graph break in forward or backward (``fullgraph=True``): what CUDA graphs and ``torch.compile``
    need, and what the eigen/SVD routes cannot give. ``aot_eager`` traces without a C++ compiler."""
    H = torch.randn(40, 8, dtype=torch.float64)
    H = H / torch.linalg.matrix_norm(H)
    U_prev = random_stiefel(40, 8, dtype=torch.float64)

    def solve(h):
        return nearest_etf(h, U_prev, solver="polar-ns", check_finite=False)

    polar_iteration_module._SCHEDULES.clear()  # a cold cache: the schedule is built while tracing
    compiled = torch.compile(solve, backend="aot_eager", fullgraph=True)
    h1, h2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
    G = torch.randn(40, 8, dtype=torch.float64)
    (compiled(h1) * G).sum().backward()
    (solve(h2) * G).sum().backward()
    Z = center_classes(H) / math.sqrt(8 - 1) + 0.5e-3 * U_prev  # the same route traced and eager: rounding only
    torch.testing.assert_close(compiled(H), solve(H), atol=2 * polar_tol(Z), rtol=0)
    rel = torch.linalg.matrix_norm(h1.grad - h2.grad) / torch.linalg.matrix_norm(h2.grad)
    assert rel <= 2 * polar_grad_rtol(Z)


@pytest.mark.parametrize("solver", ["polar", "polar-gram", "polar-ns"])
def test_double_backward_is_refused_not_silently_wrong(solver):
    H = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    U = nearest_etf(H, None, solver=solver)
    (g,) = torch.autograd.grad((U * torch.randn_like(U)).sum(), H, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|double backward"):
        g.sum().backward()


def test_tiny_delta_and_empty_batches():
    H = torch.randn(10, 4, dtype=torch.float64)
    U_prev = random_stiefel(10, 4, dtype=torch.float64)
    for delta in (0.0, 1e-9):  # Z (nearly) singular: the SVD, exactly
        fast, exact = (nearest_etf(H, U_prev, delta, solver=s) for s in ("polar-ns", "polar"))
        torch.testing.assert_close(fast, exact, atol=0, rtol=0)
    empty = nearest_etf(torch.zeros(0, 10, 4), None, solver="polar-ns")
    assert empty.shape == (0, 10, 4)

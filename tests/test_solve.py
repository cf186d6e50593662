"""The nearest-ETF solver: optimality, agreement with the paper's Riemannian solver, and the implicit
gradient against gradcheck and an independent dense deep-declarative-node oracle."""

import math

import pytest
import torch

from ncguide import canonical_stiefel, etf_weight, inner_objective, nearest_etf, random_stiefel
from ncguide.etf import center_classes
from ncguide.solve import auto_solver, ns_schedule
from tolerances import iteration_grad_rtol, orth_tol, polar_grad_rtol, polar_tol, sum_tol

SHAPES = [(2, 2), (5, 2), (6, 6), (20, 5), (64, 10), (128, 40)]


def make_problem(d, k, dtype=torch.float64, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(*batch, d, k, generator=g, dtype=torch.float64)
    H = H / torch.linalg.matrix_norm(H, keepdim=True)
    U_prev = torch.stack([random_stiefel(d, k, generator=g, dtype=torch.float64) for _ in range(math.prod(batch))])
    return H.to(dtype), U_prev.reshape(*batch, d, k).to(dtype)


def z_of(H, U_prev, delta):
    k = H.shape[-1]
    return center_classes(H) / math.sqrt(k - 1) + 0.5 * delta * U_prev


SOLVERS = ["polar", "polar-gram", "polar-ns"]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("d,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthonormal_and_global_optimality_certificate(d, k, dtype, solver):
    H, U_prev = make_problem(d, k, dtype, batch=(3,))
    U = nearest_etf(H, U_prev, solver=solver)
    assert U.shape == H.shape and U.dtype == dtype
    eye = torch.eye(k, dtype=dtype)
    Z = z_of(H, U_prev, 1e-3)
    gram = solver == "polar-gram"  # eigh(ZᵀZ) squares cond(Z) ≈ σ_max/(δ/2)
    if dtype == torch.float32:  # float32 output: its rounding, ~1e-7, dominates
        orth, rtol = 2e-4, 2e-5
    else:  # |⟨Z, U⟩ - ‖Z‖_*| <= ‖Z‖_F ‖ΔU‖_F, and the nuclear norm's own SVD error
        orth = orth_tol(Z, gram)
        rtol = float(torch.linalg.matrix_norm(Z).max()) * (polar_tol(Z, gram) + polar_tol(Z))
    assert (U.transpose(-1, -2) @ U - eye).abs().max() <= orth
    # ⟨Z, U⟩ = ‖Z‖_* certifies the global maximum of ⟨Z, U⟩ over St(d, K) (von Neumann's trace inequality).
    inner = (Z * U).sum((-2, -1))
    nuclear = torch.linalg.matrix_norm(Z, ord="nuc")
    assert torch.allclose(inner, nuclear, rtol=rtol, atol=0)


@pytest.mark.parametrize("d,k", [(8, 3), (20, 5)])
def test_closed_form_beats_random_feasible_points(d, k):
    H, U_prev = make_problem(d, k)
    U = nearest_etf(H, U_prev)
    best = inner_objective(U, H, U_prev)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        V = random_stiefel(d, k, generator=g, dtype=torch.float64)
        assert inner_objective(V, H, U_prev) >= best - sum_tol(2 * d * k, scale=4.0)  # 2dK terms, each <= 4


def test_batched_equals_loop_and_broadcast_anchor():
    H, U_prev = make_problem(12, 4, batch=(2, 3))
    U = nearest_etf(H, U_prev)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(U[i, j], nearest_etf(H[i, j], U_prev[i, j]))
    anchor = U_prev[0, 0]
    torch.testing.assert_close(nearest_etf(H, anchor)[1, 2], nearest_etf(H[1, 2], anchor))


def test_default_anchor_is_canonical_and_deterministic():
    H, _ = make_problem(10, 4)
    U0 = canonical_stiefel(10, 4, dtype=torch.float64)
    torch.testing.assert_close(nearest_etf(H), nearest_etf(H, U0))
    torch.testing.assert_close(nearest_etf(H), nearest_etf(H.clone()))


def test_delta_zero_fits_class_means_exactly_when_they_form_an_etf():
    # H = V M / sqrt(K-1) for V on St(d,K): U = V (up to the free 1-direction, fixed by the anchor) fits exactly.
    d, k = 16, 6
    V = random_stiefel(d, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    H = center_classes(V) / math.sqrt(k - 1)
    U = nearest_etf(H, V, delta=1e-3)
    torch.testing.assert_close(U, V, atol=polar_tol(z_of(H, V, 1e-3)), rtol=0)
    assert inner_objective(U, H, V, delta=0.0) < 1e-20


def test_riemannian_solver_agrees_with_closed_form():
    pytest.importorskip("pymanopt")
    for d, k, seed in [(10, 4, 0), (30, 8, 1), (64, 10, 2)]:
        H, U_prev = make_problem(d, k, seed=seed)
        # Warm start near the optimum, as in training: the previous solution of a nearby problem.
        H_before = H + 0.05 * torch.randn(d, k, generator=torch.Generator().manual_seed(9), dtype=H.dtype)
        warm = nearest_etf(H_before, U_prev)
        U_polar = nearest_etf(H, warm)
        U_riem = nearest_etf(H, warm, solver="riemannian", max_iterations=100)
        f_polar = inner_objective(U_polar, H, warm)
        f_riem = inner_objective(U_riem, H, warm)
        assert abs(float(f_polar - f_riem)) < 1e-8
        assert f_polar <= f_riem + sum_tol(2 * d * k, scale=4.0)
        torch.testing.assert_close(U_riem, U_polar, atol=1e-6, rtol=0)


def test_riemannian_gradient_is_the_implicit_gradient():
    pytest.importorskip("pymanopt")
    H, U_prev = make_problem(9, 3)
    G = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for solver in ("polar", "riemannian"):
        Hr = H.clone().requires_grad_(True)
        (nearest_etf(Hr, U_prev, solver=solver) * G).sum().backward()
        grads.append(Hr.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("d,k", [(4, 2), (5, 3), (6, 6), (9, 4)])
def test_gradcheck_through_etf_weight(d, k, solver):
    H, U_prev = make_problem(d, k, seed=d * k)
    H.requires_grad_(True)
    fn = lambda h: etf_weight(nearest_etf(h, U_prev, solver=solver))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (H,), eps=1e-6, atol=1e-7)


def test_gradcheck_batched_and_wrt_anchor():
    H, U_prev = make_problem(6, 3, batch=(2,))
    H.requires_grad_(True)
    U_prev.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, p: nearest_etf(h, p, delta=0.3), (H, U_prev), eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------ dense deep-declarative-node oracle


def ddn_dense_gradient(H, U_prev, delta, G):
    """∂L/∂H by the generic formula for equality-constrained declarative nodes (Gould, Hartley, Campbell,
    TPAMI 2022, Prop. 4.5) with y = vec(U), x = vec(H), constraints h(y) = the K(K+1)/2 distinct entries
    of UᵀU - I (independent of x, so C = 0):

        Dy = H⁻¹Aᵀ(AH⁻¹Aᵀ)⁻¹AH⁻¹B - H⁻¹B,
        A = D_y h,  B = D²_xy f,  H = D²_yy f - Σ_i λ_i D²_yy h_i,  λ from Aᵀλ = ∇_y f.

    Every derivative comes from torch.autograd.functional on the objective itself: nothing is shared
    with the library's polar backward. Dense: O((dK)²) memory, small d, K only.
    """
    d, k = H.shape
    U = nearest_etf(H, U_prev, delta).detach()
    iu = torch.triu_indices(k, k)
    c = 1.0 / math.sqrt(k - 1)

    def f(x, y):
        Hm, Um = x.reshape(d, k), y.reshape(d, k)
        return ((Hm - c * center_classes(Um)) ** 2).sum() + 0.5 * delta * ((Um - U_prev) ** 2).sum()

    def constraints(y):
        Um = y.reshape(d, k)
        return (Um.T @ Um - torch.eye(k, dtype=y.dtype))[iu[0], iu[1]]

    x, y = H.reshape(-1), U.reshape(-1)
    A = torch.autograd.functional.jacobian(constraints, y)  # p × dK
    fy = torch.autograd.functional.jacobian(lambda yy: f(x, yy), y)  # dK
    lam = torch.linalg.lstsq(A.T, fy.unsqueeze(-1)).solution.squeeze(-1)
    # at the computed U the stationarity residual is (∇²f + Σλ∇²h)·ΔU: ‖∇²f‖ <= 2 + δ, and λ
    kkt_tol = (4 + delta + 4 * float(lam.abs().max())) * polar_tol(z_of(H, U_prev, delta))
    assert torch.allclose(A.T @ lam, fy, atol=kkt_tol), "not a KKT point: the solver is not at a stationary point"

    def lagrangian(yy):
        return f(x, yy) - (lam * constraints(yy)).sum()

    Hyy = torch.autograd.functional.hessian(lagrangian, y)  # dK × dK
    B = torch.autograd.functional.jacobian(
        lambda xx: torch.autograd.grad(f(xx, y.requires_grad_(True)), y, create_graph=True)[0], x
    )  # dK × dK
    y.requires_grad_(False)
    Hinv_At = torch.linalg.solve(Hyy, A.T)
    Hinv_B = torch.linalg.solve(Hyy, B)
    S = A @ Hinv_At
    Dy = Hinv_At @ torch.linalg.solve(S, A @ Hinv_B) - Hinv_B  # dK × dK
    kappa = 2 * float(torch.linalg.cond(Hyy)) + float(torch.linalg.cond(S))  # two solves with Hyy, one with S
    return (G.reshape(-1) @ Dy).reshape(d, k), kappa


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("d,k,delta", [(3, 2, 1e-3), (4, 3, 1e-3), (5, 3, 0.1), (4, 4, 1e-3), (7, 4, 1e-2)])
def test_analytic_backward_equals_dense_ddn_formula(d, k, delta, solver):
    H, U_prev = make_problem(d, k, seed=10 + d + k)
    G = torch.randn(d, k, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    Hr = H.clone().requires_grad_(True)
    (nearest_etf(Hr, U_prev, delta, solver=solver) * G).sum().backward()
    oracle, kappa = ddn_dense_gradient(H, U_prev, delta, G)
    Z = z_of(H, U_prev, delta)
    # the oracle: dense solves of size dK, error <= dK κ u each (sum_tol); the route: its own gradient bound
    route = {"polar": polar_grad_rtol(Z), "polar-gram": 2 * polar_tol(Z, gram=True),
             "polar-ns": iteration_grad_rtol(Z, len(ns_schedule(delta)))}[solver]
    rel = torch.linalg.matrix_norm(Hr.grad - oracle) / torch.linalg.matrix_norm(oracle)
    assert rel <= sum_tol(d * k, scale=kappa) + route, (float(rel), sum_tol(d * k, scale=kappa), route)


# ------------------------------------------------------------------ degenerate inputs and near collapse


def _value_and_grad(H, U_prev, dtype=torch.float64, seed=0, solver="polar"):
    Hr = H.to(dtype).clone().requires_grad_(True)
    W = etf_weight(nearest_etf(Hr, None if U_prev is None else U_prev.to(dtype), solver=solver))
    G = torch.randn(W.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(dtype)
    (W * G).sum().backward()
    return W.detach(), Hr.grad


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    "case",
    ["zero", "rank_one", "rank_deficient", "k_equals_2", "d_equals_k", "repeated_singular_values", "no_anchor"],
)
def test_degenerate_inputs_are_finite(case, solver):
    d, k = 10, 4
    g = torch.Generator().manual_seed(0)
    U_prev = random_stiefel(d, k, generator=g, dtype=torch.float64)
    if case == "zero":
        H = torch.zeros(d, k, dtype=torch.float64)
    elif case == "rank_one":
        H = torch.randn(d, 1, generator=g, dtype=torch.float64) @ torch.randn(1, k, generator=g, dtype=torch.float64)
    elif case == "rank_deficient":
        H = torch.randn(d, 2, generator=g, dtype=torch.float64) @ torch.randn(2, k, generator=g, dtype=torch.float64)
    elif case == "k_equals_2":
        k = 2
        H, U_prev = make_problem(d, k)
    elif case == "d_equals_k":
        d = k
        H, U_prev = make_problem(d, k)
    elif case == "repeated_singular_values":
        # H M ∝ U_prev M: Z = U_prev (a M + δ/2 I) has K-1 equal singular values (and H = 0, all K equal).
        H = center_classes(U_prev)
    else:
        H, U_prev = make_problem(d, k)[0], None
    W, grad = _value_and_grad(H, U_prev, solver=solver)
    assert torch.isfinite(W).all() and torch.isfinite(grad).all()
    gram = W @ W.T
    Z = z_of(H, canonical_stiefel(d, k, dtype=H.dtype) if U_prev is None else U_prev, 1e-3)
    atol = 2 * orth_tol(Z, gram=solver == "polar-gram")  # W Wᵀ = K/(K-1) M (UᵀU) M: K/(K-1) <= 2
    torch.testing.assert_close(gram, k / (k - 1) * (torch.eye(k, dtype=gram.dtype) - 1.0 / k), atol=atol, rtol=0)


def test_zero_means_return_the_anchor():
    U_prev = random_stiefel(10, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(nearest_etf(torch.zeros(10, 4, dtype=torch.float64), U_prev), U_prev)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("d,k", [(64, 10), (256, 100)])
def test_near_collapse_float32_gradient_matches_float64(d, k, solver):
    """Class means exactly on a simplex ETF and U_prev = the previous solution: the K-1 nonzero-class
    singular values of Z coincide. The polar backward only divides by σ_i + σ_j and stays accurate
    in float32 (docs/maths.md §5: autograd through torch.linalg.svd is ~16% off here)."""
    g = torch.Generator().manual_seed(4)
    V = random_stiefel(d, k, generator=g, dtype=torch.float64)
    H = center_classes(V)
    H = H / torch.linalg.matrix_norm(H)
    U_prev = nearest_etf(H, V)  # previous step's solution at the same (collapsed) means
    Z = z_of(H, U_prev, 1e-3)
    s = torch.linalg.svdvals(Z)
    assert (s[0] - s[k - 2]) / s[0] < 1e-10  # the coincidence this test is about
    seeds = [0, 1]
    for seed in seeds:
        _, g64 = _value_and_grad(H, U_prev, torch.float64, seed, solver)
        _, g32 = _value_and_grad(H, U_prev, torch.float32, seed, solver)
        rel = torch.linalg.matrix_norm(g32.double() - g64) / torch.linalg.matrix_norm(g64)
        assert rel < 1e-4, f"float32 gradient off by {rel:.2e} relative"


def test_autocast_computes_in_float32():
    H, U_prev = make_problem(16, 4, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        U = nearest_etf(H.bfloat16(), U_prev)
    assert U.dtype == torch.float32
    assert (U.T @ U - torch.eye(4)).abs().max() < 1e-5


def test_float64_compute_dtype_option_is_more_orthonormal():
    H, U_prev = make_problem(512, 200, torch.float32)
    U32 = nearest_etf(H, U_prev, solver="polar")
    U64 = nearest_etf(H, U_prev, dtype=torch.float64)
    assert U64.dtype == torch.float64
    err32 = (U32.double().T @ U32.double() - torch.eye(200, dtype=torch.float64)).abs().max()
    err64 = (U64.T @ U64 - torch.eye(200, dtype=torch.float64)).abs().max()
    assert err64 <= orth_tol(U64) < err32
    # The float64 Gram route returns float32 but is orthonormal to float32 rounding, unlike the float32 SVD.
    Ug = nearest_etf(H, U_prev, solver="polar-gram").double()
    err_gram = (Ug.T @ Ug - torch.eye(200, dtype=torch.float64)).abs().max()
    assert err_gram < err32


# ------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    "H,U_prev,kwargs,message",
    [
        (torch.randn(3, 5), None, {}, "d >= K"),
        (torch.randn(5, 1), None, {}, "K >= 2"),
        (torch.randn(5), None, {}, "at least 2 dimensions"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]]), None, {}, "non-finite"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0], [1.0, 1.0]]), None, {}, "non-finite"),
        (torch.randn(6, 3), torch.randn(6, 4), {}, "U_prev must have shape"),
        (torch.randn(2, 6, 3), torch.randn(3, 6, 3), {}, "does not broadcast"),
        (torch.randn(6, 3), None, {"solver": "newton"}, "unknown solver"),
        (torch.randn(6, 3), None, {"delta": -1.0}, "delta"),
        (torch.ones(6, 3, dtype=torch.long), None, {}, "floating-point"),
    ],
)
def test_bad_input_raises_value_error(H, U_prev, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nearest_etf(H, U_prev, **kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    H, U_prev = make_problem(128, 20, dtype, batch=(2,))
    Hc = H.cuda().requires_grad_(True)
    Uc = nearest_etf(Hc, U_prev.cuda())
    Hh = H.clone().requires_grad_(True)
    Uh = nearest_etf(Hh, U_prev)
    Z = z_of(H.double(), U_prev.double(), 1e-3)
    torch.testing.assert_close(Uc.cpu(), Uh, atol=1e-4 if dtype == torch.float32 else 2 * polar_tol(Z), rtol=0)
    G = torch.randn_like(Uh)
    (Uc * G.cuda()).sum().backward()
    (Uh * G).sum().backward()
    if dtype == torch.float32:
        torch.testing.assert_close(Hc.grad.cpu(), Hh.grad, atol=1e-3, rtol=1e-3)
    else:  # two computations of the same implicit gradient, each within polar_grad_rtol
        rel = torch.linalg.matrix_norm(Hc.grad.cpu() - Hh.grad) / torch.linalg.matrix_norm(Hh.grad)
        assert (rel <= 2 * polar_grad_rtol(Z)).all(), rel


def test_auto_solver_picks_gram_in_float32_and_svd_in_float64():
    for dtype, expected in [(torch.float32, "polar-gram"), (torch.float64, "polar")]:
        H, U_prev = make_problem(32, 8, dtype)
        torch.testing.assert_close(nearest_etf(H, U_prev), nearest_etf(H, U_prev, solver=expected), atol=0, rtol=0)
    H, U_prev = make_problem(32, 8, torch.float32)  # delta = 0: Z is singular (Z1 = 0), so the SVD route
    torch.testing.assert_close(nearest_etf(H, U_prev, 0.0), nearest_etf(H, U_prev, 0.0, solver="polar"))
    # devices without float64 (Apple's MPS) cannot run the float64 Gram route
    assert auto_solver(torch.float32, 1e-3, "cuda") == "polar-gram"
    assert auto_solver(torch.float32, 1e-3, "mps") == auto_solver(torch.float64, 1e-3, "cpu") == "polar"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_route_falls_back_to_svd_when_z_is_singular(dtype):
    # delta = 0 leaves the 1-direction of Z empty: the Gram route would divide by σ = 0.
    H, U_prev = make_problem(20, 5, dtype)
    Hr = H.clone().requires_grad_(True)
    U = nearest_etf(Hr, U_prev, delta=0.0, solver="polar-gram")
    U.sum().backward()
    assert torch.isfinite(U).all() and torch.isfinite(Hr.grad).all()
    Z = z_of(H, U_prev, 0.0)
    if dtype == torch.float32:
        tol = orth = 1e-5
    else:  # Z has rank K-1 (Z1 = 0): U is orthonormal to rounding, and exact on the range of Z (σ_1/σ_{K-1})
        s = torch.linalg.svdvals(Z)
        orth, tol = orth_tol(Z), float(torch.linalg.matrix_norm(Z)) * polar_tol(Z, kappa=float(s[0] / s[-2]))
    assert (U.T @ U - torch.eye(5, dtype=dtype)).abs().max() <= orth
    torch.testing.assert_close((Z * U).sum(), torch.linalg.matrix_norm(Z, ord="nuc"), rtol=tol, atol=tol)

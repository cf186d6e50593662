"""The warm solver route (``solver="warm"``): along real training trajectories it matches the exact solve
step by step (U, orthonormality, implicit gradient), its regular steps decompose nothing and read
nothing from the device, a warm start never changes the answer, and its state resumes exactly."""

import math

import pytest
import torch
import torch.nn.functional as F

from host_reads import HostReads
from ncguide import NearestETFHead, WarmPolarSolver, WarmSettings, nearest_etf, polar_target, random_stiefel
from ncguide.etf import center_classes
from ncguide.solve import PolarFactor
from ncguide.warm_polar import lyapunov_cg, warm_polar
from tolerances import polar_grad_rtol, polar_tol, sum_tol, unit_roundoff


class CheckedWarm(WarmPolarSolver):
    """The head's warm solver, compared at every step with the exact solve (float64 SVD) of the same ``Z``:
    max-abs error of ``U``, ``‖UᵀU - I‖_max`` and the relative error of the gradient w.r.t. ``H̄``."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes, WarmSettings(cold_steps=0))  # warm from the third step: harsher than the default
        self.worst = {"U": 0.0, "orthonormality": 0.0, "gradient": 0.0}
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, Z, U_prev, accept=None):
        U = super().forward(Z, U_prev, accept)
        z64 = Z.detach().double().requires_grad_()
        exact = PolarFactor.apply(z64)
        G = torch.randn(U.shape, generator=self.generator, dtype=torch.float64)
        (g,) = torch.autograd.grad((U.double() * G).sum(), Z, retain_graph=True)
        (g_exact,) = torch.autograd.grad((exact * G).sum(), z64)
        k = Z.shape[-1]  # ∂L/∂H̄ = ∂L/∂Z M / sqrt(K-1), equation (2)
        g, g_exact = (center_classes(x.double()) / math.sqrt(k - 1) for x in (g, g_exact))
        U64, eye = U.detach().double(), torch.eye(k, dtype=torch.float64)
        for key, err in (
            ("U", (U64 - exact.detach()).abs().max()),
            ("orthonormality", (U64.T @ U64 - eye).abs().max()),
            ("gradient", torch.linalg.matrix_norm(g - g_exact) / torch.linalg.matrix_norm(g_exact)),
        ):
            self.worst[key] = max(self.worst[key], float(err))
        return U


def _checked_head(d: int, k: int) -> NearestETFHead:
    head = NearestETFHead(d, k, solver="warm")
    head.warm = CheckedWarm(k)
    return head


def _assert_contract(worst: dict, dtype: torch.dtype = torch.float32) -> None:
    """Every ``U`` used is within ``hard_tol`` of the exact solve (a warm step's error is at most its certificate
    ``η <= hard_tol``; on the CPU a miss is solved again exactly), plus the rounding of ``U`` to ``dtype``."""
    assert worst["U"] <= WarmSettings().hard_tol + 2 * unit_roundoff(dtype), worst
    assert worst["orthonormality"] <= 1e-6, worst
    assert worst["gradient"] <= 1e-4, worst


def _train(head, backbone, x, y, epochs, batch, opt, seed=0):
    """Plain training loop; returns the number of steps taken."""
    g = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            loss = F.cross_entropy(head(backbone(x[idx]), y[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            head.after_step()
            steps += 1
    return steps


def test_digits_mlp_trajectory_matches_the_exact_solve():
    from ncguide.experiments import build_model, load_dataset

    ds = load_dataset("digits")
    torch.manual_seed(0)
    backbone = build_model("mlp", ds.input_shape, ds.num_classes)
    head = _checked_head(backbone.feature_dim, ds.num_classes)
    opt = torch.optim.Adam([*backbone.parameters()], lr=1e-3)
    steps = _train(head, backbone, ds.x_train, ds.y_train, epochs=6, batch=64, opt=opt)
    _assert_contract(head.warm.worst)
    assert int(head.warm.fallbacks) == 0
    assert int(head.warm.refreshes) < steps / 4  # mostly warm steps
    assert int(head.warm.steps) == steps


def test_mnist1d_cnn_trajectory_matches_the_exact_solve():
    from ncguide.experiments import build_model, load_dataset

    ds = load_dataset("mnist1d")
    torch.manual_seed(0)
    backbone = build_model("cnn1d", ds.input_shape, ds.num_classes, channels=32, feature_dim=64)
    head = _checked_head(backbone.feature_dim, ds.num_classes)
    opt = torch.optim.Adam([*backbone.parameters()], lr=1e-3)
    steps = _train(head, backbone, ds.x_train, ds.y_train, epochs=4, batch=128, opt=opt)
    _assert_contract(head.warm.worst)
    assert int(head.warm.fallbacks) == 0
    assert int(head.warm.refreshes) < steps / 2


def test_ufm_k100_trajectory_matches_the_exact_solve():
    """Unconstrained features (the features are the parameters), K = 100, d = 512, SGD lr 1."""
    k, d, per_class = 100, 512, 10
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.Parameter(0.1 * torch.randn(k * per_class, d, generator=g))
    y = torch.arange(k).repeat_interleave(per_class)
    head = _checked_head(d, k)
    opt = torch.optim.SGD([feats], lr=1.0, momentum=0.9, weight_decay=5e-4)
    idx = torch.arange(k * per_class)
    steps = _train(head, lambda i: feats[i], idx, y, epochs=12, batch=128, opt=opt)
    _assert_contract(head.warm.worst)
    assert int(head.warm.fallbacks) == 0
    assert int(head.warm.refreshes) < steps / 2


def synthetic_drift(d, k, steps, batch, delta=1e-3, seed=0, t0=50):
    """``Z`` along running class means (paper schedule, per-class counts from ``t0``) of noisy samples
    around slowly moving class centres, each ``Z`` anchored at the previous exact solution."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(d, k, generator=g, dtype=torch.float64)
    A = centres + torch.randn(d, k, generator=g, dtype=torch.float64) / math.sqrt(t0)
    t = torch.full((k,), t0)
    move = 1e-2 * torch.randn(d, k, generator=g, dtype=torch.float64)
    U = random_stiefel(d, k, dtype=torch.float64, generator=g)
    for _ in range(steps):
        centres = centres + move
        y = torch.randint(0, k, (batch,), generator=g)
        n = torch.bincount(y, minlength=k)
        samples = centres[:, y] + torch.randn(d, batch, generator=g, dtype=torch.float64)
        sums = torch.zeros(d, k, dtype=torch.float64).index_add_(1, y, samples)
        t = t + (n > 0)
        A = A + (2.0 / (t + 1)).clamp_min(1e-4) * (n > 0) * (sums / n.clamp_min(1) - A)
        Z = polar_target(A / torch.linalg.matrix_norm(A), U, delta)
        U = PolarFactor.apply(Z)
        yield Z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_synthetic_drift_matches_the_exact_solve(dtype):
    """Many classes, few samples of each per batch (most columns move at each step, some not at all)."""
    d, k = 160, 120
    solver = CheckedWarm(k)
    U_prev = torch.eye(d, k, dtype=dtype)
    for Z in synthetic_drift(d, k, steps=60, batch=64):
        U_prev = solver(Z.to(dtype).requires_grad_(), U_prev).detach()
    _assert_contract(solver.worst, dtype)
    assert int(solver.fallbacks) == 0 and int(solver.refreshes) < 20


def test_gradcheck_of_a_warm_step():
    """float64 gradcheck of the regular (warm) step, from the state a refresh left at a nearby ``Z``."""
    d, k = 12, 5
    g = torch.Generator().manual_seed(3)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    U_prev = random_stiefel(d, k, dtype=torch.float64, generator=g)
    Z0 = polar_target(H / torch.linalg.matrix_norm(H), U_prev, 0.05)
    solver = WarmPolarSolver(k)
    solver(Z0, U_prev)
    Z1 = (Z0 + 1e-3 * torch.randn(d, k, generator=g, dtype=torch.float64)).requires_grad_()
    settings = WarmSettings(newton=4, cg=20, backward_cg=40)  # converged: the derivative of the exact map

    def step(z):
        return warm_polar(z, solver.V, solver.X, solver.Y, settings)[0]

    # converged Newton on the Gram matrix: as accurate as the Gram route (κ²), against the SVD
    torch.testing.assert_close(step(Z1), PolarFactor.apply(Z1), atol=polar_tol(Z1, gram=True) + polar_tol(Z1), rtol=0)
    assert torch.autograd.gradcheck(step, (Z1,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("antisymmetric", [False, True])
def test_lyapunov_cg_solves_the_equation(antisymmetric):
    k = 30
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    X = (Q * torch.logspace(-3, 0, k, dtype=torch.float64)) @ Q.T
    X = X + 1e-2 * (Q - Q.T) @ (Q - Q.T).T  # not diagonal in any convenient basis
    E = torch.randn(k, k, generator=g, dtype=torch.float64)
    E = E - E.T if antisymmetric else E + E.T
    R = X @ E + E @ X
    # Converged CG is accurate to its attainable accuracy: every step rounds at n u (n = K-term products) and
    # the gap between the true and the recurred residual grows by that much per step (Greenbaum), amplified by
    # the operator's condition number, κ(E ↦ XE + EX) = λ_max(X)/λ_min(X): after m steps ‖ΔE‖_F <= m K κ u ‖E‖_F.
    lam = torch.linalg.eigvalsh(X)
    kappa = float(lam[-1] / lam[0])

    def tol(m: int) -> float:
        return sum_tol(m * k, scale=kappa * float(torch.linalg.matrix_norm(E)))

    torch.testing.assert_close(lyapunov_cg(X, R, 200, antisymmetric), E, atol=tol(200), rtol=0)
    exact_after_converging = lyapunov_cg(X, R, 400, antisymmetric)  # steps after convergence stay at rounding
    assert torch.isfinite(exact_after_converging).all()
    torch.testing.assert_close(exact_after_converging, E, atol=tol(400), rtol=0)


def test_a_warm_start_never_changes_the_answer():
    """State from an unrelated problem: the step either converges to polar(Z) of the *current* Z (not the
    polar factor of anything it started from) or keeps U_prev and refreshes at the next step."""
    d, k = 40, 8
    g = torch.Generator().manual_seed(1)
    solver = WarmPolarSolver(k, WarmSettings(cold_steps=0, drift_max=1e9, first_interval=100))
    U_prev = random_stiefel(d, k, dtype=torch.float64, generator=g)
    for _ in range(2):  # leave the cold start
        solver(polar_target(torch.randn(d, k, generator=g, dtype=torch.float64) / 5, U_prev, 1e-3), U_prev)
    for scale in (1e-6, 1e-2, 1.0):
        H = torch.randn(d, k, generator=g, dtype=torch.float64)
        Z = polar_target(H / torch.linalg.matrix_norm(H), U_prev, 1e-3) * (1 + scale)
        U = solver(Z, U_prev)
        if solver.last_refreshed:
            continue
        if float(solver.eta) <= solver.settings.accept_tol:  # used: within about η of the exact solve
            torch.testing.assert_close(U, PolarFactor.apply(Z), atol=10 * max(float(solver.eta), 1e-7), rtol=0)
        else:
            assert torch.equal(U, U_prev)
            solver(Z, U_prev)
            assert solver.last_refreshed  # the late check forces a refresh


def _jump(d: int, k: int, settings: WarmSettings, seed: int):
    """A solver on a warm streak at one problem, then an unrelated problem ``Z2`` (a sudden jump of the means).
    Returns the solver, ``U_prev``, ``Z2`` and the solver's answer to ``Z2``."""
    g = torch.Generator().manual_seed(seed)
    solver = WarmPolarSolver(k, settings)
    U_prev = random_stiefel(d, k, dtype=torch.float64, generator=g)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    Z = polar_target(H / torch.linalg.matrix_norm(H), U_prev, 1e-3)
    for _ in range(3):
        solver(Z, U_prev)
    assert not solver.last_refreshed and int(solver.refreshes) == 2  # the first step, one cold step, a warm one
    H2 = torch.randn(d, k, generator=g, dtype=torch.float64)  # an unrelated problem
    Z2 = polar_target(H2 / torch.linalg.matrix_norm(H2), U_prev, 1e-3)
    return solver, U_prev, Z2, solver(Z2, U_prev)


JUMP_SETTINGS = dict(cold_steps=0, drift_max=1e9)
# jumps whose warm step misses hard_tol (a jump need not: at K = 2 Newton often converges from anywhere):
# at K = 2 with η <= accept_tol (the warm U is used), at K = 10 and 100 with η > accept_tol (U_prev is kept)
JUMPS = [(16, 2, 0), (64, 10, 0), (128, 100, 0)]


@pytest.mark.parametrize("d,k,seed", JUMPS)
def test_on_the_cpu_a_jump_is_solved_again_exactly_in_the_same_step(d, k, seed):
    """The default on the CPU: a warm step whose certificate misses ``hard_tol`` is solved again exactly at once
    (counted as a refresh, not a fallback), so the answer to a jump is the exact solve, not ``U_prev``."""
    solver, U_prev, Z2, U = _jump(d, k, WarmSettings(**JUMP_SETTINGS), seed)
    assert solver.last_refreshed and int(solver.fallbacks) == 0 and int(solver.refreshes) == 3
    exact = PolarFactor.apply(Z2)
    assert (U - exact).norm() <= polar_tol(Z2, gram=True) + polar_tol(Z2)  # the Gram route against the SVD


@pytest.mark.parametrize("d,k,seed", JUMPS)
def test_without_refresh_on_miss_a_jump_falls_back_is_counted_and_the_next_step_is_exact(d, k, seed):
    """What a GPU does by default (``refresh_on_miss=False``: no host read): the jump's step is counted in
    ``fallbacks`` (so that logs and the end-of-run warning show it) and answered without waiting — by its warm
    ``U``, within ``η`` of the answer, if ``η <= accept_tol``, else by ``U_prev``, which is far from it; the
    next step refreshes and is exact."""
    solver, U_prev, Z2, U = _jump(d, k, WarmSettings(**JUMP_SETTINGS, refresh_on_miss=False), seed)
    assert not solver.last_refreshed and int(solver.fallbacks) == 1 and int(solver.refreshes) == 2
    exact = PolarFactor.apply(Z2)
    eta = float(solver.eta)
    assert eta > solver.settings.hard_tol
    if eta <= solver.settings.accept_tol:
        assert not torch.equal(U, U_prev) and (U - exact).abs().max() <= eta  # measured: 0.2 η at K = 2
    else:
        assert torch.equal(U, U_prev)
        assert (U - exact).abs().max() > 0.1  # what the fallback costs: measured 0.64 (K = 10), 0.56 (K = 100)
    U = solver(Z2, U_prev)
    assert solver.last_refreshed  # the late check forces a refresh
    assert (U - exact).norm() <= polar_tol(Z2, gram=True) + polar_tol(Z2)


def test_refresh_on_miss_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match="refresh_on_miss"):
        WarmSettings(refresh_on_miss="yes")
    assert WarmPolarSolver(3).refreshes_on_miss(torch.device("cpu"))
    assert not WarmPolarSolver(3).refreshes_on_miss(torch.device("cuda"))
    assert not WarmPolarSolver(3, WarmSettings(refresh_on_miss=False)).refreshes_on_miss(torch.device("cpu"))


def test_the_head_reports_the_warm_solvers_counters():
    d, k = 16, 4
    assert NearestETFHead(d, k).solver_stats() == {}
    head = NearestETFHead(d, k, solver="warm")
    _steps(head, 5)
    assert head.solver_stats() == {"warm_refreshes": int(head.warm.refreshes), "warm_fallbacks": 0}
    assert head.solver_stats()["warm_refreshes"] == 5  # the cold start: every call exact


def _always_missing(head: NearestETFHead) -> NearestETFHead:
    """A warm head whose every warm step misses its tolerance and falls back (the GPU path, on the CPU)."""
    head.warm.settings = WarmSettings(cold_steps=0, soft_tol=1e-300, hard_tol=1e-300, refresh_on_miss=False)
    return head


def test_a_training_run_logs_the_warm_counters_and_warns_about_fallbacks(tmp_path):
    """Every metrics.jsonl record of a warm run carries ``warm_refreshes`` and ``warm_fallbacks``; a run that had
    fallbacks ends with one warning; other solvers' records have neither key."""
    import json

    from ncguide.experiments import TrainConfig, train

    base = dict(dataset="digits", model="mlp", model_kwargs={"widths": [32, 16]}, epochs=2, batch_size=256,
                optimizer="sgd", lr=0.05, device="cpu", seed=0, method="nearest-etf")
    cfg = TrainConfig.from_dict({**base, "solver": "warm"})
    with pytest.warns(UserWarning, match=r"fell back on \d+ of \d+ training steps") as caught:
        train(cfg, tmp_path / "warm", progress="none", head=_always_missing(NearestETFHead(16, 10, solver="warm")))
    assert len([w for w in caught if "fell back" in str(w.message)]) == 1
    recs = [json.loads(line) for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["warm_fallbacks"] for r in recs][0] == 0 and recs[-1]["warm_fallbacks"] > 0
    assert all(r["warm_refreshes"] + r["warm_fallbacks"] <= r["step"] for r in recs)
    train(TrainConfig.from_dict(base), tmp_path / "exact", progress="none")
    recs = [json.loads(line) for line in (tmp_path / "exact" / "metrics.jsonl").read_text().splitlines()]
    assert not any("warm_fallbacks" in r or "warm_refreshes" in r for r in recs)


def test_regular_steps_decompose_nothing_and_read_nothing():
    """50 training steps of the head as a GPU runs them: decompositions and host reads happen on the declared
    refresh steps only (``last_refreshed``); every other step is matrix products and elementwise work."""
    d, k = 48, 6
    head = NearestETFHead(d, k, solver="warm")
    head.warm.settings = WarmSettings(cold_steps=0, refresh_on_miss=False)  # the CPU default reads η (free there)
    head.check_finite = False  # the CPU default reads one flag per step; the CUDA default does not
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(k, d, generator=g)
    warm_steps = 0
    for _ in range(50):
        y = torch.arange(60) % k
        f = (centres[y] + torch.randn(60, d, generator=g)).requires_grad_()
        with HostReads() as mode:
            h = head.transform(f)
            F.cross_entropy(head._logits(h, y), y).backward()  # the step minus the one-off label check
        if head.warm.last_refreshed:
            assert mode.seen  # the detector sees the refresh's eigensolver
        else:
            assert mode.seen == [], mode.seen
            warm_steps += 1
    assert warm_steps >= 40


def test_resume_continues_the_warm_state_exactly():
    d, k = 32, 6
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(48, d, generator=g) + 2 * torch.eye(k, d)[torch.arange(48) % k], torch.arange(48) % k)
               for _ in range(40)]
    a = NearestETFHead(d, k, solver="warm")
    a.warm.settings = WarmSettings(cold_steps=5)
    for f, y in batches[:25]:
        a(f, y)
    b = NearestETFHead(d, k, solver="warm")
    state = a.state_dict()
    b.load_state_dict(state)
    assert b.warm.get_extra_state() == a.warm.get_extra_state()
    for f, y in batches[25:]:
        torch.testing.assert_close(a(f, y), b(f, y), atol=0, rtol=0)
        assert a.warm.last_refreshed == b.warm.last_refreshed
    assert torch.equal(a.U, b.U) and int(a.warm.refreshes) == int(b.warm.refreshes)


def test_the_functional_api_refuses_the_stateful_route():
    with pytest.raises(ValueError, match="keeps state"):
        nearest_etf(torch.randn(6, 3), solver="warm")


def test_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="newton"):
        WarmSettings(newton=0)
    with pytest.raises(ValueError, match="soft_tol"):
        WarmSettings(soft_tol=1e-3, hard_tol=1e-6)
    with pytest.raises(ValueError, match="one d×K problem"):
        WarmPolarSolver(3)(torch.randn(2, 6, 3), torch.randn(6, 3))


def test_compiles_as_one_graph():
    """The regular step traces without a graph break (what CUDA graphs and torch.compile need)."""
    d, k = 24, 6
    g = torch.Generator().manual_seed(0)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    U_prev = random_stiefel(d, k, dtype=torch.float64, generator=g)
    solver = WarmPolarSolver(k)
    Z = polar_target(H / torch.linalg.matrix_norm(H), U_prev, 1e-3)
    solver(Z, U_prev)
    compiled = torch.compile(lambda z: warm_polar(z, solver.V, solver.X, solver.Y)[0], backend="aot_eager",
                             fullgraph=True)
    z1, z2 = Z.clone().requires_grad_(), Z.clone().requires_grad_()
    G = torch.randn(d, k, generator=g, dtype=torch.float64)
    (compiled(z1) * G).sum().backward()
    (warm_polar(z2, solver.V, solver.X, solver.Y)[0] * G).sum().backward()
    rel = torch.linalg.matrix_norm(z1.grad - z2.grad) / torch.linalg.matrix_norm(z2.grad)
    assert rel <= 2 * polar_grad_rtol(Z)  # the same route traced and eager: rounding only


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_regular_training_step_does_not_sync():
    head = NearestETFHead(512, 100, solver="warm").to("cuda")
    head.warm.settings = WarmSettings(cold_steps=0, drift_max=1e9, first_interval=64)  # no refresh in steps 6..11
    g = torch.Generator(device="cuda").manual_seed(0)
    y = torch.arange(256, device="cuda") % 100
    centres = 3 * torch.randn(100, 512, device="cuda", generator=g)
    for step in range(12):
        f = (centres[y] + torch.randn(256, 512, device="cuda", generator=g)).requires_grad_()
        if step < 6:  # the cold start and the first refresh
            F.cross_entropy(head(f, y), y).backward()
            continue
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            F.cross_entropy(head(f, y), y).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if head.warm.last_refreshed:
            continue
    assert int(head.warm.fallbacks) == 0


def _steps(head, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    d, k = head.feature_dim, head.num_classes
    centres = 3 * torch.randn(k, d, generator=g)
    outs = []
    for _ in range(n):
        y = torch.arange(4 * k) % k
        f = (centres[y] + torch.randn(4 * k, d, generator=g)).to(dtype).requires_grad_()
        logits = head(f, y)
        F.cross_entropy(logits, y).backward()
        outs.append(logits.detach())
    return outs


@pytest.mark.parametrize("cast", ["float", "half", "bfloat16"])
def test_casting_the_head_keeps_the_warm_state_in_float64(cast):
    """``model.float()`` / ``.half()`` cast every floating buffer; the warm state must stay float64
    (its values unchanged), or the next regular step mixes dtypes."""
    head = NearestETFHead(16, 4, solver="warm")
    _steps(head, 12)
    before = {n: b.clone() for n, b in head.warm.named_buffers()}
    getattr(head, cast)()
    for n, b in head.warm.named_buffers():
        assert b.dtype == before[n].dtype and torch.equal(b, before[n]), n
    head.float()
    _steps(head, 8, seed=1)
    assert int(head.warm.steps) == 20


def test_settings_assigned_after_construction_take_effect():
    """``solver.settings = WarmSettings(...)`` must govern the policy exactly as if passed to the constructor."""
    k = 4
    a = WarmPolarSolver(k, WarmSettings(cold_steps=0, drift_max=1e9, first_interval=50))
    b = WarmPolarSolver(k)
    b.settings = WarmSettings(cold_steps=0, drift_max=1e9, first_interval=50)
    assert a.get_extra_state() == b.get_extra_state()
    g = torch.Generator().manual_seed(0)
    U_prev = random_stiefel(16, k, dtype=torch.float64, generator=g)
    H = torch.randn(16, k, generator=g, dtype=torch.float64)
    for t in range(12):
        Z = polar_target((H + 0.01 * t) / torch.linalg.matrix_norm(H), U_prev, 1e-3)
        assert torch.equal(a(Z, U_prev), b(Z, U_prev))
        assert a.last_refreshed == b.last_refreshed
    assert int(b.refreshes) == 2  # the cold start, then 10 warm steps within the 50-step interval
    with pytest.raises(ValueError, match="WarmSettings"):
        b.settings = {"drift_max": 1.0}


def test_delta_zero_is_refused_up_front_and_a_tiny_delta_says_what_to_do():
    with pytest.raises(ValueError, match="delta > 0"):
        NearestETFHead(16, 4, solver="warm", delta=0.0)
    head = NearestETFHead(16, 4, solver="warm", delta=1e-12)
    with pytest.raises(ValueError, match="increase delta") as info:
        _steps(head, 1)
    assert "use delta > 0" not in str(info.value)


def test_interval_settings_are_consistent():
    with pytest.raises(ValueError, match="first_interval"):
        WarmSettings(first_interval=64, max_interval=8)
    with pytest.raises(ValueError, match="newton"):
        WarmSettings(newton=True)


def test_the_first_steps_are_exact_then_warm():
    """The default policy solves the first ``cold_steps`` calls exactly (where α_t = 2/(t+1) moves the means
    fastest), then goes warm on a slowly moving problem."""
    d, k = 40, 8
    g = torch.Generator().manual_seed(4)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    U_prev = random_stiefel(d, k, dtype=torch.float64, generator=g)
    solver = WarmPolarSolver(k, WarmSettings(cold_steps=10))
    refreshed = []
    for t in range(30):
        Z = polar_target((H + 1e-4 * t) / torch.linalg.matrix_norm(H + 1e-4 * t), U_prev, 1e-3)
        U_prev = solver(Z, U_prev)
        refreshed.append(solver.last_refreshed)
    assert all(refreshed[:10]) and not all(refreshed[10:])
    assert WarmSettings().cold_steps > 0


def _blob_batch(step: int, d: int, k: int, n: int = 32):
    """A batch around fixed class centres: the running means settle, so the policy goes warm after the cold start."""
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(99))
    y = torch.arange(n) % k
    return centres[y] + 0.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(step)), y


@pytest.mark.parametrize("kind", ["empty", "nan"])
@pytest.mark.parametrize("at", [30, 100])  # in the cold start (calls counted), among warm steps (interval counted)
def test_a_rejected_batch_leaves_no_trace_in_the_warm_policy(kind, at):
    """A run with one empty (or, without the host check, non-finite) batch inserted is bitwise the run without it:
    every ``U``, the refresh count, and the whole state (the host-side policy included) at the end."""
    d, k, n = 8, 3, 140

    def run(insert: int | None):
        head = NearestETFHead(d, k, solver="warm")
        head.check_finite = False  # the CUDA default: the rejection is a device-side select only
        Us = []
        for step in range(n):
            if step == insert:
                if kind == "empty":
                    head(torch.zeros(0, d), torch.zeros(0, dtype=torch.long))
                else:
                    f, y = _blob_batch(1000, d, k)
                    f[0, 0] = math.nan
                    assert torch.isnan(head(f, y)).all()
            head(*_blob_batch(step, d, k))
            Us.append(head.U.clone())
        return head, Us

    (plain, plain_U), (other, other_U) = run(None), run(at)
    assert all(torch.equal(a, b) for a, b in zip(plain_U, other_U))
    assert int(other.warm.refreshes) == int(plain.warm.refreshes) < n  # warm steps were taken
    a, b = plain.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert (torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key]), key

"""``NearestETFHead(freeze_after=n)``: the nearest ETF for ``n`` training updates, then a fixed ETF at its own ``U``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ncguide.heads as heads
from ncguide.etf import canonical_stiefel
from ncguide.heads import FixedETFHead, NearestETFHead, build_head, head_options
from tolerances import sum_tol

D, K, N = 10, 4, 24


def batches(steps: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        y = torch.cat([torch.arange(K), torch.randint(K, (N - K,), generator=g)])
        out.append((torch.randn(N, D, generator=g, dtype=dtype) + y[:, None] * 0.3, y))
    return out


def step(head: NearestETFHead, x: torch.Tensor, y: torch.Tensor):
    """One training forward/backward; (logits, feature gradient)."""
    x = x.clone().requires_grad_()
    logits = head(x, y)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), x.grad


def state(head: NearestETFHead) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in head.state_dict().items()}


def same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.parametrize("method", ["nearest-etf", "nearest-etf-nograd"])
def test_before_the_freeze_it_is_the_unfrozen_head_step_for_step(method):
    frozen, plain = build_head(method, D, K, freeze_after=3), build_head(method, D, K)
    for i, (x, y) in enumerate(batches(3)):
        a, b = step(frozen, x, y), step(plain, x, y)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), i
        assert torch.equal(frozen.U, plain.U), i
        assert int(frozen.updates) == i + 1 and frozen.is_frozen == (i == 2) == bool(frozen.frozen)
    for key in ("U", "means.means", "means.global_mean", "means.steps", "means.counts"):
        assert torch.equal(frozen.state_dict()[key], plain.state_dict()[key]), key


@pytest.mark.parametrize("solver", ["auto", "warm"])
def test_after_the_freeze_no_solve_runs_and_only_the_global_mean_moves(solver, monkeypatch):
    head = NearestETFHead(D, K, solver=solver, freeze_after=2)
    data = batches(5)
    plain = NearestETFHead(D, K, solver=solver)
    for x, y in data:
        step(plain, x, y)
    for x, y in data[:2]:
        step(head, x, y)
    before = state(head)
    calls = []
    monkeypatch.setattr(heads, "nearest_etf", lambda *a, **k: calls.append("nearest_etf"))
    monkeypatch.setattr(NearestETFHead, "solve", lambda *a, **k: calls.append("solve"))
    if head.warm is not None:
        monkeypatch.setattr(type(head.warm), "forward", lambda *a, **k: calls.append("warm"))
    for x, y in data[2:]:
        step(head, x, y)
    assert calls == []
    after = head.state_dict()
    moved = {k for k in before if not same(before[k], after[k])}
    assert moved == {"updates", "means.global_mean", "means.steps", "means.counts"}
    k = K
    assert torch.equal(after["means.steps"][:k], before["means.steps"][:k])  # class counts unchanged
    assert torch.equal(after["means.counts"][:k], before["means.counts"][:k])
    assert int(after["means.steps"][k]) == 5 and int(after["updates"]) == 5
    # μ_G keeps the paper schedule over all five batches, as an unfrozen head's does (up to summation order)
    torch.testing.assert_close(head.means.global_mean, plain.means.global_mean, rtol=1e-5, atol=1e-6)


def test_frozen_gradient_is_a_fixed_etf_heads(monkeypatch):
    """Logits and feature gradient of the frozen head = an independent fixed-ETF formula at its U, and =
    ``FixedETFHead`` with that U (float64)."""
    head = NearestETFHead(D, K, freeze_after=2).double()
    data = batches(3, torch.float64)
    for x, y in data[:2]:
        step(head, x, y)
    U, tau = head.U.clone(), head.temperature
    x, y = data[2]
    logits, grad = step(head, x, y)

    ref_x = x.clone().requires_grad_()
    h = tau * ref_x / ref_x.norm(dim=1, keepdim=True)
    M = torch.eye(K, dtype=torch.float64) - 1.0 / K
    W = math.sqrt(K / (K - 1)) * M @ U.T
    ref = h @ W.T - W @ h.mean(0)
    F.cross_entropy(ref, y).backward()
    # products and norms of length <= D + K, a chain of about 4 of them: |logits| <= 2τ, and relative to the gradient
    tol_logits = sum_tol(4 * (D + K), scale=2 * tau)
    tol_grad = sum_tol(4 * (D + K), scale=float(ref_x.grad.abs().max()))
    torch.testing.assert_close(logits, ref.detach(), rtol=0, atol=tol_logits)
    torch.testing.assert_close(grad, ref_x.grad, rtol=0, atol=tol_grad)

    fixed = FixedETFHead(D, K).double()
    fixed.fixed_weight.copy_(W)
    f_logits, f_grad = step(fixed, x, y)
    torch.testing.assert_close(logits, f_logits, rtol=0, atol=tol_logits)
    torch.testing.assert_close(grad, f_grad, rtol=0, atol=tol_grad)


def test_eval_after_the_freeze_uses_the_frozen_u_and_the_running_global_mean():
    head = NearestETFHead(D, K, freeze_after=1)
    for x, y in batches(3):
        step(head, x, y)
    head.eval()
    x, _ = batches(1)[0]
    h = head.transform(x)
    W = head.weight
    assert torch.equal(head(x), h @ W.T - W @ head.means.global_mean)
    assert torch.equal(head.bias, -(W @ head.means.global_mean))


def test_freeze_after_zero_keeps_the_initial_u(monkeypatch):
    head = build_head("nearest-etf", D, K, freeze_after=0)
    assert head.is_frozen and bool(head.frozen)
    monkeypatch.setattr(heads, "nearest_etf", lambda *a, **k: pytest.fail("solved"))
    for x, y in batches(3):
        step(head, x, y)
    assert torch.equal(head.U, canonical_stiefel(D, K)) and int(head.updates) == 3


@pytest.mark.parametrize("solver", ["auto", "warm"])
@pytest.mark.parametrize("cut", [1, 3, 5])  # before, at, after the freeze
def test_state_dict_round_trip_continues_bitwise(solver, cut):
    data = batches(7)
    ref = NearestETFHead(D, K, solver=solver, freeze_after=3)
    ref_out = [step(ref, x, y) for x, y in data]
    first = NearestETFHead(D, K, solver=solver, freeze_after=3)
    for x, y in data[:cut]:
        step(first, x, y)
    resumed = NearestETFHead(D, K, solver=solver, freeze_after=3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.is_frozen == (cut >= 3) and resumed._updates == cut
    for i, (x, y) in enumerate(data[cut:], cut):
        logits, grad = step(resumed, x, y)
        assert torch.equal(logits, ref_out[i][0]) and torch.equal(grad, ref_out[i][1]), i
    for key, value in ref.state_dict().items():
        assert same(resumed.state_dict()[key], value), key


def test_a_state_saved_before_freeze_after_existed_loads():
    head = NearestETFHead(D, K)
    for x, y in batches(2):
        step(head, x, y)
    old = {k: v for k, v in head.state_dict().items() if k not in ("updates", "frozen")}
    fresh = NearestETFHead(D, K, freeze_after=3)
    fresh.load_state_dict(old)
    assert int(fresh.updates) == 2 and not fresh.is_frozen
    for x, y in batches(3)[2:]:
        step(fresh, x, y)
    assert fresh.is_frozen


def test_a_frozen_state_stays_frozen_when_loaded():
    head = NearestETFHead(D, K, freeze_after=1)
    step(head, *batches(1)[0])
    other = NearestETFHead(D, K)  # freeze_after=None: the loaded flag wins
    other.load_state_dict(head.state_dict())
    assert other.is_frozen
    later = NearestETFHead(D, K, freeze_after=5)
    later.load_state_dict(NearestETFHead(D, K, freeze_after=None).state_dict())
    assert not later.is_frozen


def test_options_repr_and_validation():
    assert "freeze_after" in head_options("nearest-etf") and "freeze_after" in head_options("nearest-etf-nograd")
    assert "freeze_after=7" in repr(build_head("nearest-etf", D, K, freeze_after=7))
    assert "freeze_after=None" in repr(NearestETFHead(D, K))
    for method in ("standard", "standard-plain", "fixed-etf"):
        assert "freeze_after" not in head_options(method)
        with pytest.raises(ValueError, match=r"does not take \['freeze_after'\]"):
            build_head(method, D, K, freeze_after=1)
    for bad in (-1, 1.5, 2.0, True, "3"):
        with pytest.raises(ValueError, match="freeze_after must be None or an integer >= 0"):
            NearestETFHead(D, K, freeze_after=bad)


def test_counting_and_freezing_read_the_device_once_at_the_freeze(monkeypatch):
    """The update count is added on the device; the freeze decision reads it once, at the step where the host's
    count of calls reaches ``freeze_after`` (a batch rejected on the device is not counted, so the host count is
    only an upper bound). No other step, before or after the freeze, reads a device value (the solve replaced by a
    stand-in; check_finite=False, as CUDA runs by default; the input checks skipped, as their label-range check
    reads CPU targets at every call, CUDA ones at the first only)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from host_reads import HostReads

    monkeypatch.setattr(heads, "nearest_etf", lambda H, U_prev, delta, **kw: U_prev + 0 * H)
    monkeypatch.setattr(heads.Head, "_check_inputs", lambda *a: None)
    head = NearestETFHead(D, K, freeze_after=2)
    head.check_finite = False
    for i, (x, y) in enumerate(batches(4)):
        with HostReads() as reads:
            step(head, x, y)
        assert reads.seen == (["_local_scalar_dense.default"] if i == 1 else []), i
    assert head.is_frozen and int(head.updates) == 4

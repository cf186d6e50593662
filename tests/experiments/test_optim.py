"""Optimisers and learning-rate schedules (``experiments/optim.py``): the schedules' closed forms and
AGD's initialisation and update."""

import math

import pytest
import torch
from torch import nn

from ncguide.experiments.optim import AGD, agd_init_, agd_scale, build_optimizer, lr_factor, set_lr

# ------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("warmup", [0, 5])
def test_warmup_then_cosine_matches_closed_form(warmup):
    total = 40
    for s in [0, 1, 4, 5, 6, 17, 39, 40, 50]:
        if s < warmup:
            want = (s + 1) / warmup
        else:
            want = 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup))))
        assert lr_factor(s, total, schedule="cosine", warmup_steps=warmup) == pytest.approx(want, abs=1e-15)
    # the cosine goes from 1 right after warm-up to 0 at the end; warm-up rises linearly to 1
    assert lr_factor(warmup, total, schedule="cosine", warmup_steps=warmup) == 1.0
    assert lr_factor(total, total, schedule="cosine", warmup_steps=warmup) == pytest.approx(0.0, abs=1e-15)


def test_step_and_constant_schedules_and_set_lr():
    ms = [10, 20]
    got = [lr_factor(s, 30, schedule="step", milestones=ms, gamma=0.5) for s in (0, 9, 10, 19, 20, 29)]
    assert got == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor(7, 30, schedule="constant", warmup_steps=4) == 1.0
    assert lr_factor(1, 30, schedule="constant", warmup_steps=4) == 0.5
    opt = build_optimizer("sgd", [("w", nn.Parameter(torch.zeros(2)))], 0.2)
    assert set_lr(opt, 0.25) == pytest.approx(0.05) and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="valid"):
        lr_factor(0, 10, schedule="linear")


# ------------------------------------------------------------------------------------------ AGD


def _agd_net(conv: bool | str) -> nn.Module:
    torch.manual_seed(0)
    if conv == "1d":
        return nn.Sequential(nn.Conv1d(3, 8, 5, bias=False), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 8, 5, bias=False))
    if conv:
        return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 5, bias=False))
    return nn.Sequential(nn.Linear(12, 32, bias=False), nn.ReLU(), nn.Linear(32, 16, bias=False), nn.ReLU(),
                         nn.Linear(16, 5, bias=False))


@pytest.mark.parametrize("conv", [False, True, "1d"])
def test_agd_step_has_the_documented_spectral_scale(conv):
    net = _agd_net(conv).double()
    agd_init_(net.parameters())
    opt = AGD(net.parameters(), lr=1.0)
    params = list(net.parameters())
    L = len(params)
    for p in params:  # orthogonal init: every tap's singular values all equal s = sqrt(n_out/n_in)[/sqrt(k)]
        taps = p.detach().reshape(p.shape[0], p.shape[1], -1)
        for k in range(taps.shape[2]):
            sv = torch.linalg.svdvals(taps[:, :, k])
            assert torch.allclose(sv, torch.full_like(sv, agd_scale(p.shape)), rtol=1e-10)
    shape = {False: (12,), True: (3, 6, 6), "1d": (3, 12)}[conv]
    x = torch.randn(64, *shape, dtype=torch.float64)
    y = torch.randint(0, 5, (64,))
    nn.functional.cross_entropy(net(x), y).backward()
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    G = sum(agd_scale(g.shape) * g.reshape(g.shape[0], g.shape[1], -1).norm(dim=(0, 1)).sum() for g in grads) / L
    eta = math.log((1 + math.sqrt(1 + 4 * float(G))) / 2)
    assert float(opt.step()) == pytest.approx(eta, rel=1e-12)
    for p, w0, g in zip(params, before, grads):
        dw = (p.detach() - w0).reshape(p.shape[0], p.shape[1], -1)
        g = g.reshape(dw.shape)
        for k in range(dw.shape[2]):
            # ‖ΔW‖_F = (η/L)·s per tap, in the direction of -∇W, hence ‖ΔW‖_* <= (η/L)·‖W‖_*
            assert float(dw[:, :, k].norm()) == pytest.approx(eta / L * agd_scale(p.shape), rel=1e-10)
            cos = float((dw[:, :, k] * -g[:, :, k]).sum() / (dw[:, :, k].norm() * g[:, :, k].norm()))
            assert cos == pytest.approx(1.0, abs=1e-12)
            assert float(torch.linalg.matrix_norm(dw[:, :, k], ord=2)) <= eta / L * agd_scale(p.shape) * (1 + 1e-12)


def test_agd_does_not_touch_the_parameters_when_constructed():
    """Like every torch optimiser: its initialisation is agd_init_, an explicit call."""
    net = _agd_net(conv=False)
    before = [p.detach().clone() for p in net.parameters()]
    AGD(net.parameters(), lr=1.0)
    build_optimizer("agd", net.named_parameters(), 1.0)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    agd_init_(net.parameters())
    assert not any(torch.equal(p, b) for p, b in zip(net.parameters(), before))

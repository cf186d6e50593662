"""Probe: how far the warm route's answer is from the exact solve, along short training runs and after a jump.

    python studies/warm_error.py            # ~5 min on 2 CPU cores; prints two markdown tables

Along training (the trajectories of ``tests/test_warm_polar.py``): ``NearestETFHead(solver="warm")`` trains a
digits MLP (6 epochs, Adam), a MNIST-1D CNN (4 epochs, Adam) and the UFM at K = 100, d = 512 (12 epochs, SGD),
on float32 features as training does; at every step the ``U`` the head used is compared with the polar factor
of the same ``Z`` by a float64 SVD (max-abs error). Two policies: the default (``cold_steps=64``) and the
harsher ``cold_steps=0``; both with ``refresh_on_miss`` at its CPU default and with ``False`` (what a GPU does).

After a jump: a solver on a warm streak meets an unrelated problem (``tests/test_warm_polar.py::_jump``); the
error of its answer with and without the same-step refresh.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ncguide import NearestETFHead, WarmPolarSolver, WarmSettings, polar_target, random_stiefel
from ncguide.solve import PolarFactor


class Traced(WarmPolarSolver):
    """Records, per call, whether it refreshed, its certificate and the max-abs error of the returned ``U``."""

    def __init__(self, k: int, settings: WarmSettings):
        super().__init__(k, settings)
        self.trace: list[tuple[bool, float, float]] = []

    def forward(self, Z, U_prev, accept=None):
        U = super().forward(Z, U_prev, accept)
        exact = PolarFactor.apply(Z.detach().double())
        self.trace.append((self.last_refreshed, float(self.eta), float((U.detach().double() - exact).abs().max())))
        return U


def _train(head, forward, x, y, epochs, batch, opt):
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            loss = F.cross_entropy(head(forward(x[idx]), y[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def run(setting: str, settings: WarmSettings) -> Traced:
    from ncguide.experiments import build_model, load_dataset

    torch.manual_seed(0)
    if setting == "ufm-k100":
        k, d, per_class = 100, 512, 10
        feats = torch.nn.Parameter(0.1 * torch.randn(k * per_class, d, generator=torch.Generator().manual_seed(0)))
        head = NearestETFHead(d, k, solver="warm")
        head.warm = Traced(k, settings)
        opt = torch.optim.SGD([feats], lr=1.0, momentum=0.9, weight_decay=5e-4)
        _train(head, lambda i: feats[i], torch.arange(k * per_class), torch.arange(k).repeat_interleave(per_class),
               12, 128, opt)
        return head.warm
    ds = load_dataset(setting)
    if setting == "digits":
        backbone, epochs, batch = build_model("mlp", ds.input_shape, ds.num_classes), 6, 64
    else:
        backbone = build_model("cnn1d", ds.input_shape, ds.num_classes, channels=32, feature_dim=64)
        epochs, batch = 4, 128
    head = NearestETFHead(backbone.feature_dim, ds.num_classes, solver="warm")
    head.warm = Traced(ds.num_classes, settings)
    _train(head, backbone, ds.x_train, ds.y_train, epochs, batch, torch.optim.Adam(backbone.parameters(), lr=1e-3))
    return head.warm


def jump(d: int, k: int, seed: int, refresh_on_miss) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    solver = WarmPolarSolver(k, WarmSettings(cold_steps=0, drift_max=1e9, refresh_on_miss=refresh_on_miss))
    U_prev = random_stiefel(d, k, dtype=torch.float64, generator=g)
    H = torch.randn(d, k, generator=g, dtype=torch.float64)
    for _ in range(3):
        solver(polar_target(H / torch.linalg.matrix_norm(H), U_prev, 1e-3), U_prev)
    H2 = torch.randn(d, k, generator=g, dtype=torch.float64)
    Z2 = polar_target(H2 / torch.linalg.matrix_norm(H2), U_prev, 1e-3)
    U = solver(Z2, U_prev)
    return float(solver.eta), float((U - PolarFactor.apply(Z2)).abs().max())


def main() -> None:
    print("| setting | policy | steps | refreshes | fallbacks | max error, warm steps | max error, all steps |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for setting in ("digits", "mnist1d", "ufm-k100"):
        for name, settings in (("default", WarmSettings()), ("cold_steps=0", WarmSettings(cold_steps=0)),
                               ("cold_steps=0, no same-step refresh",
                                WarmSettings(cold_steps=0, refresh_on_miss=False))):
            solver = run(setting, settings)
            warm = [e for refreshed, _, e in solver.trace if not refreshed]
            print(f"| {setting} | {name} | {len(solver.trace)} | {int(solver.refreshes)} | {int(solver.fallbacks)} | "
                  f"{max(warm, default=math.nan):.2g} | {max(e for *_, e in solver.trace):.2g} |")
    print()
    print("| d × K | seed | η of the jump's warm step | error, CPU default (same-step refresh) | error, no refresh |")
    print("|---|---:|---:|---:|---:|")
    for d, k in ((16, 2), (64, 10), (128, 100)):
        for seed in range(4):
            eta, err_fallback = jump(d, k, seed, False)
            _, err_cpu = jump(d, k, seed, None)
            print(f"| {d} × {k} | {seed} | {eta:.2g} | {err_cpu:.2g} | {err_fallback:.2g} |")


if __name__ == "__main__":
    main()

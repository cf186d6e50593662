"""The nearest-ETF head under torch.distributed: 2 CPU processes (gloo) on two halves of each batch
behave like one process on the whole batch.

Convention (see means.py): the per-class sums are all-reduced with an autograd-aware all-reduce whose
backward sums gradients over ranks, so rank r's features get the gradient of Σ_r' L_r' (the sum of the
ranks' mean losses). With equal halves the single-process mean loss is L = (L_0 + L_1)/2, hence
rank-r feature gradient = world_size × (rows of ∂L/∂features), and DDP's averaging of parameter
gradients over ranks gives exactly ∂L/∂θ.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ncguide import WarmSettings
from ncguide.heads import FixedETFHead, NearestETFHead, NonFiniteFeaturesError

WORLD, N, D_IN, D, K, STEPS = 2, 24, 10, 12, 5, 3
WARM_STEPS = 10  # solver="warm": refreshes and regular steps
FROZEN_STEPS = 4  # freeze_after=2: two solves, then two frozen steps
TOL = 1e-10  # float64; far below the 1e-6 asked for


def _batches(steps: int = STEPS):
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        y = torch.randint(K, (N,), generator=g)
        if s == 1:
            y[y == 3] = 0  # one class absent from a step
        out.append((torch.randn(N, D_IN, generator=g, dtype=torch.float64), y))
    return out


class _Net(nn.Module):
    def __init__(self, solver: str = "auto", freeze_after: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(D_IN, D)
        self.head = NearestETFHead(D, K, solver=solver, freeze_after=freeze_after)
        if solver == "warm":  # warm steps from the third step on (tolerances loose: these batches jump)
            self.head.warm.settings = WarmSettings(
                cold_steps=0, drift_max=1e9, first_interval=8, soft_tol=0.1, hard_tol=0.1, accept_tol=0.1
            )
        self.double()  # float64: the comparison tests the reduction, not float32 round-off (which the
        # solve's implicit gradient amplifies by up to ~1/δ)

    def forward(self, x, y):
        return self.head(self.backbone(x), y)


def _run(rank: int, world: int, train_backbone: bool, solver: str = "auto", steps: int = STEPS,
         freeze_after: int | None = None):
    """STEPS steps on this rank's slice of each batch; record W, logits and gradients. Frozen backbone:
    the features' gradients are kept. Trained backbone (wrapped in DDP when world > 1): the
    parameters' gradients are kept."""
    net = _Net(solver, freeze_after)
    model = DistributedDataParallel(net) if train_backbone and world > 1 else net
    opt = torch.optim.SGD(net.parameters(), lr=0.5 if train_backbone else 0.0)
    rows = slice(rank * N // world, (rank + 1) * N // world)
    records = []
    for x, y in _batches(steps):
        if train_backbone:
            feats, logits = None, model(x[rows], y[rows])
        else:
            feats = net.backbone(x[rows]).detach().requires_grad_()
            logits = net.head(feats, y[rows])
        opt.zero_grad()
        F.cross_entropy(logits, y[rows]).backward()
        records.append(
            {
                "W": net.head.weight.clone(),
                "logits": logits.detach().clone(),
                "feat_grad": None if feats is None else feats.grad.clone(),
                "param_grads": [p.grad.clone() for p in net.parameters()] if train_backbone else [],
            }
        )
        opt.step()
    records.append({k: v.clone() if torch.is_tensor(v) else v for k, v in net.head.state_dict().items()})
    return records


def _nan_on_one_rank(rank: int) -> dict[str, bool]:
    """A clean step, then NaN features on rank 1 only: the all-reduced batch mean is NaN on every rank,
    so every rank rejects the batch (no rank waits in a collective the others skipped)."""
    out = {}
    for head in (NearestETFHead(D, K).double(), FixedETFHead(D, K).double()):
        x = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        y = torch.arange(N) % K
        rows = slice(rank * N // 2, (rank + 1) * N // 2)
        head(x[rows], y[rows])
        before = {k: v.clone() for k, v in head.state_dict().items()}
        bad = x[rows].clone()
        if rank == 1:
            bad[0, 0] = float("nan")
        try:
            head(bad, y[rows])
            out[type(head).__name__] = False
        except NonFiniteFeaturesError:
            out[type(head).__name__] = all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        plain = _run(rank, world, train_backbone=False)
        ddp = _run(rank, world, train_backbone=True)
        nan = _nan_on_one_rank(rank)
        warm = _run(rank, world, train_backbone=True, solver="warm", steps=WARM_STEPS)
        frozen = _run(rank, world, train_backbone=True, steps=FROZEN_STEPS, freeze_after=2)
        torch.save({"plain": plain, "ddp": ddp, "nan": nan, "warm": warm, "frozen": frozen},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The records of the two gloo ranks (one spawn for the module's tests)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_two_processes_match_one_process_on_the_whole_batch(ranks):
    for r in range(WORLD):  # rejected, with the state unchanged, on both ranks
        assert ranks[r]["nan"] == {"NearestETFHead": True, "FixedETFHead": True}, r
    for variant in ("plain", "ddp"):
        single = _run(0, 1, train_backbone=variant == "ddp")
        r0, r1 = ranks[0][variant], ranks[1][variant]
        for step in range(STEPS):
            assert torch.equal(r0[step]["W"], r1[step]["W"]), (variant, step)  # identical on both ranks
            torch.testing.assert_close(r0[step]["W"], single[step]["W"], rtol=0, atol=TOL)
            logits = torch.cat([r0[step]["logits"], r1[step]["logits"]])
            torch.testing.assert_close(logits, single[step]["logits"], rtol=0, atol=TOL)
            if variant == "plain":
                grad = torch.cat([r0[step]["feat_grad"], r1[step]["feat_grad"]]) / WORLD
                torch.testing.assert_close(grad, single[step]["feat_grad"], rtol=0, atol=TOL)
            else:  # DDP-averaged parameter gradients = the single-process gradients of the mean loss
                for g0, g1, g in zip(r0[step]["param_grads"], r1[step]["param_grads"], single[step]["param_grads"]):
                    torch.testing.assert_close(g0, g1, rtol=0, atol=TOL)
                    torch.testing.assert_close(g0, g, rtol=0, atol=TOL)
        for key, value in single[STEPS].items():  # the running state agrees after training
            assert torch.equal(r0[STEPS][key], r1[STEPS][key]), key
            torch.testing.assert_close(r0[STEPS][key], value, rtol=0, atol=TOL)


def test_warm_route_ranks_stay_identical(ranks):
    """solver="warm" under DDP: every rank makes the same refresh decisions (the means are all-reduced),
    so the ranks' classifiers are bitwise equal at every step and equal to one process on the whole batch."""
    r0, r1 = (rank["warm"] for rank in ranks)
    single = _run(0, 1, train_backbone=True, solver="warm", steps=WARM_STEPS)
    for step in range(WARM_STEPS):
        assert torch.equal(r0[step]["W"], r1[step]["W"]), step
        # one process on the whole batch: the same decisions; rounding differences grow over 10 trained steps
        torch.testing.assert_close(r0[step]["W"], single[step]["W"], rtol=0, atol=1e-4)
    assert torch.equal(r0[-1]["warm.refreshes"], r1[-1]["warm.refreshes"])
    assert int(r0[-1]["warm.refreshes"]) < WARM_STEPS  # regular steps ran


def test_freeze_after_counts_alike_on_every_rank(ranks):
    """freeze_after=2 under DDP: both ranks freeze at the same step, stay bitwise equal and match one process."""
    r0, r1 = (rank["frozen"] for rank in ranks)
    single = _run(0, 1, train_backbone=True, steps=FROZEN_STEPS, freeze_after=2)
    for step in range(FROZEN_STEPS):
        assert torch.equal(r0[step]["W"], r1[step]["W"]), step
        torch.testing.assert_close(r0[step]["W"], single[step]["W"], rtol=0, atol=TOL)
        torch.testing.assert_close(torch.cat([r0[step]["logits"], r1[step]["logits"]]), single[step]["logits"],
                                   rtol=0, atol=TOL)
    assert torch.equal(r0[2]["W"], r0[3]["W"])  # frozen after the second step
    for key in ("updates", "frozen", "means.steps", "U"):
        assert torch.equal(r0[-1][key], r1[-1][key]), key
        torch.testing.assert_close(r0[-1][key], single[-1][key], rtol=0, atol=TOL)
    assert int(r0[-1]["updates"]) == FROZEN_STEPS and bool(r0[-1]["frozen"])

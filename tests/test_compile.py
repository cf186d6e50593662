"""``torch.compile`` of the heads: one graph, no recompiles across training steps, the same numbers as eager.

Recompiles are counted with ``torch._dynamo.testing.CompileCounterWithBackend`` (its frame count grows with
every graph compiled: none may be added after the first step) on the ``aot_eager`` backend, which traces forward
and backward as inductor does but runs them with eager kernels (bitwise the eager numbers, no C++ compiler);
``fullgraph=True`` turns any graph break into an error, and ``counters["graph_break"]`` lists the breaks.
What does not compile to one graph, and why: ``solver="warm"`` (its refresh policy is host-side Python: the
solver runs eagerly between two graphs) and a pending ``freeze_after`` (the host decides when to freeze: one
graph break per step, one recompile at the freeze).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from ncguide.heads import build_head
from ncguide.solve import GRAM_MIN_RATIO, nearest_etf, polar_target

D, K, N = 16, 4, 32
ONE_GRAPH = [("standard", {}), ("standard-plain", {}), ("fixed-etf", {}), ("nearest-etf", {}),
             ("nearest-etf-nograd", {}), ("nearest-etf", {"solver": "polar"}), ("nearest-etf", {"solver": "polar-ns"})]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def batch(step: int, device="cpu"):
    g = torch.Generator().manual_seed(step)
    y = torch.arange(N) % K
    return (torch.randn(N, D, generator=g) + 0.5 * y[:, None]).to(device), y.to(device)


def train_step(head, x, y):
    """Forward, loss, backward; the logits and the feature gradient."""
    x = x.clone().requires_grad_()
    logits = head(x, y)
    F.cross_entropy(logits, y).backward()
    head.after_step()
    return logits.detach(), x.grad


def same_state(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values())
               if torch.is_tensor(u))


@pytest.mark.parametrize("method,kw", ONE_GRAPH)
def test_a_compiled_head_is_one_graph_without_recompiles_and_equals_eager(method, kw):
    head = build_head(method, D, K, **kw)
    twin = copy.deepcopy(head)
    cc = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(head, backend=cc, fullgraph=True)  # a graph break would raise
    frames = []
    for step in range(4):
        x, y = batch(step)
        (a, ga), (b, gb) = train_step(compiled, x, y), train_step(twin, x, y)
        assert torch.equal(a, b) and torch.equal(ga, gb), step
        frames.append(cc.frame_count)
    assert frames == [frames[0]] * 4, f"recompiled: {frames}"
    assert not counters["graph_break"]
    assert same_state(head, twin)


@pytest.mark.parametrize("method,kw", ONE_GRAPH)
def test_a_compiled_training_step_with_a_head_is_one_graph(method, kw):
    """Backbone + head + loss compiled together, backward and optimiser step outside: one graph for all steps,
    and the parameters follow the eager run's exactly."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, D))
    head = build_head(method, D, K, **kw)
    twin_backbone, twin_head = copy.deepcopy(backbone), copy.deepcopy(head)

    def loss_of(net, hd):
        return lambda x, y: F.cross_entropy(hd(net(x), y), y)

    cc = CompileCounterWithBackend("aot_eager")
    runs = [(torch.compile(loss_of(backbone, head), backend=cc, fullgraph=True), backbone, head),
            (loss_of(twin_backbone, twin_head), twin_backbone, twin_head)]
    opts = [torch.optim.SGD([*net.parameters(), *hd.parameters()], lr=0.1, momentum=0.9) for _, net, hd in runs]
    frames = []
    for step in range(4):
        x, y = batch(step)
        for (loss_fn, _, hd), opt in zip(runs, opts):
            loss = loss_fn(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            hd.after_step()
        frames.append(cc.frame_count)
    assert frames == [frames[0]] * 4 and not counters["graph_break"], frames
    params = [*backbone.parameters(), *head.parameters()], [*twin_backbone.parameters(), *twin_head.parameters()]
    for a, b in zip(*params):
        assert torch.equal(a, b)
    assert same_state(head, twin_head)


def test_the_warm_solver_runs_eagerly_between_graphs_without_recompiles():
    head = build_head("nearest-etf", D, K, solver="warm")
    twin = copy.deepcopy(head)
    cc = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(head, backend=cc)
    frames = []
    for step in range(8):
        x, y = batch(step)
        (a, ga), (b, gb) = train_step(compiled, x, y), train_step(twin, x, y)
        assert torch.equal(a, b) and torch.equal(ga, gb), step
        frames.append(cc.frame_count)
    assert len(set(frames)) == 1, frames  # every graph compiled at the first step, none since
    assert counters["graph_break"] and all("disable" in reason for reason in counters["graph_break"])


def test_a_pending_freeze_recompiles_once_at_the_freeze():
    head = build_head("nearest-etf", D, K, freeze_after=3)
    twin = copy.deepcopy(head)
    cc = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(head, backend=cc)
    frames = []
    for step in range(6):
        x, y = batch(step)
        (a, ga), (b, gb) = train_step(compiled, x, y), train_step(twin, x, y)
        assert torch.equal(a, b) and torch.equal(ga, gb), step
        frames.append(cc.frame_count)
    assert head.is_frozen and twin.is_frozen and same_state(head, twin)
    assert frames[1:3] == [frames[0]] * 2 and frames[3] > frames[2] and frames[3:] == [frames[3]] * 3, frames


def test_the_label_check_stays_in_the_graph():
    """Under torch.compile the label range is checked on the device (``torch._assert_async``), without a graph break."""
    compiled = torch.compile(build_head("nearest-etf", D, K), backend="aot_eager", fullgraph=True)
    x, y = batch(0)
    compiled(x, y)
    with pytest.raises(RuntimeError, match=r"class indices in \[0, 4\)"):
        compiled(x, torch.where(y == 1, K, y))


def test_a_non_finite_batch_under_compile_is_rejected_on_the_device():
    """Inside a graph the flag is not read (no raise, as ``check_finite=False``): NaN logits, no state change."""
    head = build_head("nearest-etf", D, K)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    x, y = batch(0)
    compiled(x, y)
    twin = copy.deepcopy(head)
    bad = x.clone()
    bad[3, 2] = float("nan")
    assert torch.isnan(compiled(bad, y)).any()
    assert same_state(head, twin)


def test_the_compiled_gram_route_keeps_the_anchor_where_eigh_is_too_ill_conditioned():
    """Eager, such a batch is solved by the SVD (a host read); in a graph, those matrices keep ``U_prev`` and the
    others are the Gram route's answer."""
    g = torch.Generator().manual_seed(0)
    k, n = 3, 2000  # d = K: the means can cancel the anchor
    H = torch.randn(n, k, k, generator=g, dtype=torch.float64)
    H = (H / torch.linalg.matrix_norm(H, keepdim=True)).float()
    U_prev = torch.linalg.qr(torch.randn(n, k, k, generator=g, dtype=torch.float64))[0].float()
    solve = lambda h, p: nearest_etf(h, p, solver="polar-gram", check_finite=False)  # noqa: E731
    U = torch.compile(solve, backend="aot_eager", fullgraph=True)(H, U_prev)
    s = torch.linalg.svdvals(polar_target(H.double(), U_prev.double(), 1e-3))
    bad = s[:, -1] <= GRAM_MIN_RATIO * s[:, 0]
    assert 0 < int(bad.sum()) < n  # both kinds occur (about 10% ill-conditioned here)
    assert torch.equal(U[bad], U_prev[bad])
    torch.testing.assert_close(U[~bad], solve(H[~bad], U_prev[~bad]), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiles_the_default_head():
    """The default backend (inductor, C++ on the CPU): one graph, and eager's numbers up to float32 rounding, which
    the solve amplifies by ~1/δ (U within 1e-4; measured 1e-5)."""
    head = build_head("nearest-etf", D, K)
    twin = copy.deepcopy(head)
    cc = CompileCounterWithBackend("inductor")
    compiled = torch.compile(head, backend=cc, fullgraph=True)
    frames = []
    for step in range(3):
        x, y = batch(step)
        (a, ga), (b, gb) = train_step(compiled, x, y), train_step(twin, x, y)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert torch.linalg.matrix_norm(ga - gb) <= 1e-3 * torch.linalg.matrix_norm(gb)
        frames.append(cc.frame_count)
    torch.testing.assert_close(head.U, twin.U, rtol=0, atol=1e-4)
    assert frames == [frames[0]] * 3, frames


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method,kw", [("nearest-etf", {}), ("nearest-etf", {"solver": "polar-ns"}), ("fixed-etf", {})])
def test_cuda_compiled_training_step(method, kw):
    """On CUDA with inductor: backbone + head + loss as one graph for every step, close to eager on CUDA."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, D)).cuda()
    head = build_head(method, D, K, **kw).cuda()
    twin_backbone, twin_head = copy.deepcopy(backbone), copy.deepcopy(head)
    cc = CompileCounterWithBackend("inductor")
    compiled = torch.compile(lambda x, y: F.cross_entropy(head(backbone(x), y), y), backend=cc, fullgraph=True)
    frames = []
    for step in range(4):
        x, y = batch(step, "cuda")
        loss = compiled(x, y)
        ref = F.cross_entropy(twin_head(twin_backbone(x), y), y)
        torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
        loss.backward()
        ref.backward()
        for a, b in zip(backbone.parameters(), twin_backbone.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
            a.grad = b.grad = None
        frames.append(cc.frame_count)
    assert frames == [frames[0]] * 4, frames

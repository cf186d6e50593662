"""Cost of the nearest-ETF solve against one thin SVD of the same d×K matrix, measured in one run.

    python benchmarks/solver.py [--device cpu|cuda|all] [--dtype float32|float64|both] [--shapes 512x10,512x100]

Solvers: ``polar`` (thin SVD), ``polar-gram`` (float64 ``eigh`` of ``ZᵀZ``), ``polar-ns`` (float64
matrix-product iteration, no synchronisation). Columns: forward (polar solve), forward+backward (the
implicit backward), and their ratios to one ``torch.linalg.svd(Z, full_matrices=False)`` timed
interleaved with them. Each number is the median of ``--reps`` timings after a warm-up. Target:
forward+backward within 1.5× of one thin SVD for K >= 100.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ncguide import WarmPolarSolver, nearest_etf, polar_target, random_stiefel
from ncguide.warm_polar import warm_polar

DEFAULT_SHAPES = [(512, 10), (512, 100), (2048, 1000), (4096, 2000)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def bench_shape(d: int, k: int, device: str, dtype: torch.dtype, reps: int, solver: str = "polar") -> dict:
    g = torch.Generator().manual_seed(0)
    H = torch.randn(d, k, generator=g).to(device=device, dtype=dtype)
    H = H / H.norm()
    U_prev = random_stiefel(d, k, generator=g, dtype=dtype, device=device)
    G = torch.randn(d, k, generator=g).to(device=device, dtype=dtype)
    Z = H - H.mean(1, keepdim=True) + 5e-4 * U_prev

    def svd():
        torch.linalg.svd(Z, full_matrices=False)

    def forward():
        with torch.no_grad():
            nearest_etf(H, U_prev, solver=solver, check_finite=False)

    def forward_backward():
        h = H.detach().requires_grad_(True)
        U = nearest_etf(h, U_prev, solver=solver, check_finite=False)
        torch.autograd.backward(U, G)

    for fn in (svd, forward, forward_backward):  # warm-up (kernels, workspace)
        fn()
    times: dict[str, list[float]] = {"svd": [], "fwd": [], "fwdbwd": []}
    for _ in range(reps):  # interleaved, so drifts in machine load hit all three alike
        times["svd"].append(_time(svd, device))
        times["fwd"].append(_time(forward, device))
        times["fwdbwd"].append(_time(forward_backward, device))
    med = {key: statistics.median(v) for key, v in times.items()}
    return {
        "device": device,
        "solver": solver,
        "dtype": str(dtype).replace("torch.", ""),
        "d": d,
        "K": k,
        "svd_ms": med["svd"],
        "fwd_ms": med["fwd"],
        "fwdbwd_ms": med["fwdbwd"],
        "fwd_ratio": med["fwd"] / med["svd"],
        "fwdbwd_ratio": med["fwdbwd"] / med["svd"],
    }


def bench_building_blocks(d: int, k: int, device: str, reps: int) -> dict:
    """Raw decompositions of the same d×K float32 matrix (CUDA: each cuSOLVER SVD driver)."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(d, k, generator=g).to(device)
    ops = {"svd": lambda: torch.linalg.svd(Z, full_matrices=False)}
    if device == "cuda":
        for driver in ("gesvd", "gesvdj", "gesvda"):
            ops[f"svd[{driver}]"] = lambda dr=driver: torch.linalg.svd(Z, full_matrices=False, driver=dr)
    ops["eigh(ZtZ) f64"] = lambda: torch.linalg.eigh(Z.double().T @ Z.double())
    ops["eigh(ZtZ) f32"] = lambda: torch.linalg.eigh(Z.T @ Z)
    ops["matmul dKK"] = lambda: Z @ (Z.T @ Z)
    Z64 = Z.double()
    ops["matmul dKK f64"] = lambda: Z64 @ (Z64.T @ Z64)  # polar-ns's unit of work (it runs in float64)
    for fn in ops.values():
        fn()
    return {name: statistics.median(_time(fn, device) for _ in range(reps)) for name, fn in ops.items()}


class _OpCounter(TorchDispatchMode):
    """Counts the operators dispatched (an upper bound on the kernels launched on a GPU, without fusion)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def warm_units(settings) -> tuple[int, int]:
    """Products of a regular warm step (forward + backward): ``(# d×K×K, # K×K×K)``, as counted in
    :mod:`ncguide.warm_polar`."""
    s = settings
    return 5, 6 + s.newton * (1 + s.cg) + s.inverse * (1 + s.cg) + 5 + s.backward_cg


def bench_warm(d: int, k: int, device: str, reps: int) -> dict:
    """``solver="warm"``: a regular step (forward, forward+backward) along a slowly drifting ``Z``, beside
    one thin SVD and the Gram route (whose ``eigh`` is what a refresh step runs), and in units of one
    float64 ``d×K×K`` product. ``amortised``: a regular step plus 1/256 of a refresh (the longest
    refresh interval)."""
    g = torch.Generator().manual_seed(0)
    H0, move = torch.randn(d, k, generator=g), torch.randn(d, k, generator=g)
    U_prev = random_stiefel(d, k, generator=g, device=device)
    G = torch.randn(d, k, generator=g).to(device)

    def target(t):
        H = (H0 + 1e-3 * t * move).to(device)
        return polar_target(H / H.norm(), U_prev, 1e-3)

    solver = WarmPolarSolver(k).to(device)
    t = 0
    while t < 50 and (t < 3 or solver.last_refreshed):  # leave the cold start
        solver(target(t), U_prev)
        t += 1
    Z = target(t)
    Z64, Q64 = Z.double(), torch.randn(k, k, generator=g, dtype=torch.float64).to(device)

    def fwd():
        with torch.no_grad():
            warm_polar(Z, solver.V, solver.X, solver.Y, solver.settings)

    def fwdbwd():
        z = Z.detach().requires_grad_(True)
        torch.autograd.backward(warm_polar(z, solver.V, solver.X, solver.Y, solver.settings)[0], G)

    def gram():
        h = Z.detach().requires_grad_(True)
        torch.autograd.backward(nearest_etf(h, U_prev, solver="polar-gram", check_finite=False), G)

    ops = {"svd": lambda: torch.linalg.svd(Z, full_matrices=False), "gram": gram, "fwd": fwd, "fwdbwd": fwdbwd,
           "dKK": lambda: Z64 @ Q64, "KKK": lambda: Q64 @ Q64}
    for fn in ops.values():
        fn()
    med = {name: statistics.median(_time(fn, device) for _ in range(reps)) for name, fn in ops.items()}
    n_dkk, n_kkk = warm_units(solver.settings)
    with _OpCounter() as ops_gram:
        gram()
    with _OpCounter() as ops_warm:
        fwdbwd()
    return {
        **med,
        "ops": (ops_warm.count, ops_gram.count),
        "units": med["fwdbwd"] / med["dKK"],
        "predicted_units": n_dkk + n_kkk * med["KKK"] / med["dKK"],
        "amortised": med["fwdbwd"] + med["gram"] / 256,
        "counts": (n_dkk, n_kkk),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--dtype", default="both", choices=["float32", "float64", "both"])
    parser.add_argument("--shapes", default=",".join(f"{d}x{k}" for d, k in DEFAULT_SHAPES))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--solvers", default="polar,polar-gram,polar-ns")
    parser.add_argument("--warm-only", action="store_true", help="only the warm-route table")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [dv for dv in devices if dv == "cpu" or torch.cuda.is_available()]
    dtypes = [torch.float32, torch.float64] if args.dtype == "both" else [getattr(torch, args.dtype)]

    print(f"# solver='warm', a regular step, float32 in, float64 work — {machine()}")
    print("| device | d×K | svd ms | gram fwd+bwd ms | warm fwd ms | warm fwd+bwd ms | f64 dKK ms | f64 KKK ms "
          "| fwd+bwd in f64 dKK | counted | amortised ms | products (dKK, KKK) | ops warm / gram |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for device in devices:
        for d, k in shapes:
            r = bench_warm(d, k, device, args.reps if k < 1000 or device == "cuda" else max(2, args.reps // 2))
            print(f"| {device} | {d}x{k} | {r['svd']:.2f} | {r['gram']:.2f} | {r['fwd']:.2f} | {r['fwdbwd']:.2f} | "
                  f"{r['dKK']:.3f} | {r['KKK']:.3f} | {r['units']:.1f} | {r['predicted_units']:.1f} | "
                  f"{r['amortised']:.2f} | {r['counts']} | {r['ops'][0]} / {r['ops'][1]} |", flush=True)
    if args.warm_only:
        return
    print(f"\n# nearest_etf cost vs one thin SVD — {machine()}")
    header = (
        f"| {'device':6} | {'solver':10} | {'dtype':7} | {'d':>5} | {'K':>5} | {'svd ms':>9} | {'fwd ms':>9} | "
        f"{'fwd+bwd ms':>10} | {'fwd/svd':>7} | {'fwd+bwd/svd':>11} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for device in devices:
        for dtype in dtypes:
            for d, k in shapes:
                for solver in args.solvers.split(","):
                    reps = args.reps if k < 1000 or device == "cuda" else max(2, args.reps // 2)
                    r = bench_shape(d, k, device, dtype, reps, solver)
                    print(
                        f"| {r['device']:6} | {solver:10} | {r['dtype']:7} | {d:>5} | {k:>5} | {r['svd_ms']:>9.2f} | "
                        f"{r['fwd_ms']:>9.2f} | {r['fwdbwd_ms']:>10.2f} | {r['fwd_ratio']:>7.2f} | "
                        f"{r['fwdbwd_ratio']:>11.2f} |",
                        flush=True,
                    )
    for device in devices:
        print(f"\n# building blocks on {device}, float32 input, median ms")
        for d, k in shapes:
            blocks = bench_building_blocks(d, k, device, args.reps)
            print(f"{d}x{k}: " + ", ".join(f"{name} {ms:.2f}" for name, ms in blocks.items()), flush=True)


if __name__ == "__main__":
    main()

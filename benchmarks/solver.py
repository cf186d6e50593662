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

from ncguide import nearest_etf, random_stiefel

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
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [dv for dv in devices if dv == "cpu" or torch.cuda.is_available()]
    dtypes = [torch.float32, torch.float64] if args.dtype == "both" else [getattr(torch, args.dtype)]

    print(f"# nearest_etf cost vs one thin SVD — {machine()}")
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

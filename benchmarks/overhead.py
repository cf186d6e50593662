"""Time and memory of one training step per method, same backbone, as a ratio to ``standard``.

    python benchmarks/overhead.py [--device cpu|cuda] [--settings mlp-10,resnet18-100] [--reps 7]

A step is: backbone forward, head forward (with targets), cross-entropy, backward, SGD step and
``head.after_step()``. Methods are timed interleaved (one step of each in turn, ``--reps`` rounds,
median per method) after warm-up steps, so drifts in machine load hit all of them alike. Every
method has its own copy of the same initial backbone. On CUDA, bf16 autocast (as ``train.py`` with
``amp: bf16``) and the peak memory of one step per method (``max_memory_allocated`` during the step
minus what was allocated before it: activations, gradients, workspaces) are reported.

Settings ``<model>-<K>``: ``mlp-K`` (MLP, 784-dim input, d = 512, or 2048 for K = 1000),
``ufm-K`` (free features, d = 512 or 2048), ``cnn1d-K`` and ``cnn2d-K`` (the MNIST-1D and Fashion-MNIST
models of the convergence studies, batch 128), ``resnet18-K`` (32×32 input, d = 512),
``resnet50-K`` (224×224 input, d = 2048).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ncguide import WarmSettings
from ncguide.experiments.models import build_model
from ncguide.heads import build_head

METHODS = ["standard", "fixed-etf", "nearest-etf", "nearest-etf-nograd", "standard-plain"]
CPU_SETTINGS = ["mlp-10", "mlp-100", "mlp-1000", "resnet18-10", "resnet18-100"]
CUDA_SETTINGS = CPU_SETTINGS + ["resnet50-1000"]


def make_setting(name: str, batch_size: int | None, device: str):
    """(backbone, input batch, labels, K) for a setting name."""
    model_name, k = name.rsplit("-", 1)
    k = int(k)
    g = torch.Generator().manual_seed(0)
    if model_name == "mlp":
        d = 2048 if k > 512 else 512
        model = build_model("mlp", (784,), k, widths=(1024, d))
        shape, bs = (784,), batch_size or 256
    elif model_name == "ufm":
        d = 2048 if k > 512 else 512
        bs = batch_size or 256
        model = build_model("ufm", (), k, num_samples=bs, feature_dim=d)
        x = torch.arange(bs)
        shape = None
    elif model_name == "cnn1d":  # the MNIST-1D setting of the shipped config mnist1d (sequences of length 40)
        model = build_model("cnn1d", (40,), k, channels=64, feature_dim=256)
        shape, bs = (40,), batch_size or 128
    elif model_name == "cnn2d":  # the Fashion-MNIST setting of the shipped config fashion-mnist (28x28 grey)
        model = build_model("cnn2d", (1, 28, 28), k, channels=[16, 32, 64], feature_dim=128)
        shape, bs = (1, 28, 28), batch_size or 128
    elif model_name == "resnet18":
        model = build_model("resnet18", (3, 32, 32), k)
        shape, bs = (3, 32, 32), batch_size or 128
    elif model_name == "resnet50":
        model = build_model("resnet50", (3, 224, 224), k)
        shape, bs = (3, 224, 224), batch_size or 64
    else:
        raise ValueError(f"unknown setting {name!r}")
    if shape is not None:
        x = torch.randn(bs, *shape, generator=g)
    y = torch.arange(bs) % k  # every class present when bs >= K
    y = y[torch.randperm(bs, generator=g)]
    return model.to(device), x.to(device), y.to(device), k


def bench_setting(name: str, methods: list[str], device: str, reps: int, warmup: int, batch_size, amp: bool):
    base, x, y, k = make_setting(name, batch_size, device)
    runs = {}
    for spec in methods:
        method, _, solver = spec.partition(":")
        torch.manual_seed(0)
        model = copy.deepcopy(base)
        kwargs = {"solver": solver} if solver else {}
        head = build_head(method, model.feature_dim, k, **kwargs).to(device)
        if getattr(head, "warm", None) is not None:  # time regular steps, no cold start; refreshes are counted
            head.warm.settings = WarmSettings(cold_steps=0)
        params = list(model.parameters()) + list(head.parameters())
        runs[spec] = (model, head, torch.optim.SGD(params, lr=1e-3, momentum=0.9))

    def step(spec):
        model, head, opt = runs[spec]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            features = model(x)
        logits = head(features, y)
        F.cross_entropy(logits, y).backward()
        opt.step()
        head.after_step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = {spec: [] for spec in methods}
    memory, refreshed = {}, {spec: 0 for spec in methods}
    for spec in methods:
        for _ in range(warmup):
            step(spec)
        if device == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()  # every method's model, optimiser state and data
            step(spec)
            sync()
            memory[spec] = (torch.cuda.max_memory_allocated() - resident) / 2**20
    for _ in range(reps):
        for spec in methods:
            sync()
            t0 = time.perf_counter()
            step(spec)
            sync()
            times[spec].append((time.perf_counter() - t0) * 1e3)
            warm = getattr(runs[spec][1], "warm", None)  # solver="warm": count its exact refreshes
            refreshed[spec] += bool(warm is not None and warm.last_refreshed)
    med = {spec: statistics.median(v) for spec, v in times.items()}
    ref = med.get("standard", next(iter(med.values())))
    rows = []
    for spec in methods:
        rows.append(
            {
                "setting": name,
                "method": spec,
                "ms": med[spec],
                "ratio": med[spec] / ref,
                "spread": (max(times[spec]) - min(times[spec])) / med[spec],
                "mem_mib": memory.get(spec),
                "refreshes": refreshed[spec],
            }
        )
    return rows


def machine(device: str) -> str:
    text = f"{platform.system()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name()}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--settings", default=None, help="comma-separated; default depends on the device")
    parser.add_argument("--methods", default=",".join(METHODS), help="method[:solver], comma-separated")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-amp", action="store_true", help="on CUDA, run the backbone in float32")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    settings = (args.settings or ",".join(CUDA_SETTINGS if args.device == "cuda" else CPU_SETTINGS)).split(",")
    methods = args.methods.split(",")
    amp = args.device == "cuda" and not args.no_amp
    print(f"# step time per method, ratio to standard — {machine(args.device)}, amp={'bf16' if amp else 'off'}")
    print(f"| {'setting':14} | {'method':24} | {'ms/step':>9} | {'ratio':>6} | {'spread':>6} | {'step MiB':>9} | "
          "refreshes |")
    print(f"|{'-' * 16}|{'-' * 26}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 11}|{'-' * 11}|")
    for name in settings:
        for r in bench_setting(name, methods, args.device, args.reps, args.warmup, args.batch_size, amp):
            mem = f"{r['mem_mib']:9.0f}" if r["mem_mib"] is not None else f"{'-':>9}"
            print(
                f"| {r['setting']:14} | {r['method']:24} | {r['ms']:9.2f} | {r['ratio']:6.3f} | "
                f"{r['spread']:6.2f} | {mem} | {r['refreshes']:9d} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

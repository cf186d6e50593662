"""Wall-clock of one whole comparison under different launchers, side by side in one invocation.

    python benchmarks/launch.py                      # CPU: 3 methods x 4 seeds, --jobs 1 vs --jobs 2
    python benchmarks/launch.py --slurm              # ... and through Slurm (scripts/local-slurm.sh up)
    python benchmarks/launch.py --mode gpu           # 8 small runs on one GPU: one after another vs --runs-per-gpu 8
    python benchmarks/launch.py --epochs 40          # longer runs: where --jobs 2 pays for its processes
    python benchmarks/launch.py --tiny               # a few seconds' check that every variant runs

Each measurement is ``python -m ncguide compare ...`` into a fresh output folder (nothing reused), timed from
start to exit, so process start-up, data loading and the report count as a user sees them. The variants
are interleaved (``--repeats`` rounds of one comparison per variant) so that drifts in machine load hit
them alike; the table gives the median and the range per variant and the ratio of medians to the first
variant. It also says whether each variant's ``summary.json`` equals the first one's up to wall-clock
fields (on CPU a different thread count per run may round differently, ~1e-8).

Each run of ``--jobs 2`` (and of Slurm) is a new Python process, which pays for importing torch and ncguide
before it trains; the table's header gives that start-up, timed alone (median of 3), so the break-even run
length can be read off: ``--jobs 2`` gains when a run trains for much longer than it takes to start.

CPU mode: ``--jobs 1`` trains in the compare's process with all cores; ``--jobs 2`` runs two children with
half the cores each. Slurm: jobs of ``cores // 2`` CPUs each, so two at once on a one-node cluster of this
machine. GPU mode: ``--jobs 1`` (one run after another on the GPU) against ``--jobs 8 --runs-per-gpu 8``
(eight children sharing it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the comparison: small runs (a few seconds each on a CPU core), 3 methods x 4 seeds
CPU_RUN = ["--dataset", "digits", "--model", "mlp", "--epochs", "10", "--batch-size", "64", "--lr", "0.05",
           "--methods", "standard,fixed-etf,nearest-etf", "--seeds", "4", "--device", "cpu"]
# eight small GPU runs: the unconstrained-features model, K = 100, d = 512
GPU_RUN = ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=100", "--set", "feature_dim=512", "--set",
           "samples_per_class=50", "--epochs", "20", "--batch-size", "500", "--set", "optimizer=sgd", "--lr", "1.0",
           "--set", "weight_decay=0", "--methods", "standard,nearest-etf", "--seeds", "4", "--device", "cuda"]
TINY_RUN = ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=4", "--set", "feature_dim=8", "--set",
            "samples_per_class=5", "--epochs", "2", "--batch-size", "10", "--methods", "standard,nearest-etf",
            "--seeds", "2"]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def variants(mode: str, slurm: bool, tiny: bool, epochs: int | None = None) -> dict[str, list[str]]:
    if mode == "gpu":
        run = [*TINY_RUN, "--device", "cuda"] if tiny else GPU_RUN
        return {"sequential (--jobs 1)": run, "--jobs 8 --runs-per-gpu 8": [*run, "--jobs", "8", "--runs-per-gpu", "8"]}
    run = [*TINY_RUN, "--device", "cpu"] if tiny else list(CPU_RUN)
    if epochs is not None and not tiny:
        run[run.index("--epochs") + 1] = str(epochs)
    out = {"--jobs 1": run, "--jobs 2": [*run, "--jobs", "2"]}
    if slurm:
        cpus = max(1, cores() // 2)
        out[f"slurm, {cpus} CPU{'s' if cpus > 1 else ''} per job"] = [
            *run, "--launcher", "slurm", "--slurm-time", "60", "--slurm-cpus-per-run", str(cpus), "--slurm-mem", "1G"]
    return out


def without_wall_clock(x):
    if isinstance(x, dict):
        return {k: without_wall_clock(v) for k, v in x.items() if k != "wall_s"}
    if isinstance(x, list):
        return [without_wall_clock(v) for v in x]
    return x


def startup_seconds(repeats: int = 3) -> float:
    """Wall-clock of a new process importing what a run's child imports before it trains (median)."""
    code = "import torch, ncguide.experiments.train, ncguide.experiments.build, ncguide.experiments.report"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(args: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "ncguide", "compare", *args, "--out", str(out)], capture_output=True,
                         text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"compare failed (exit {res.returncode}): {' '.join(args)}\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--slurm", action="store_true", help="CPU mode: also through Slurm (needs sbatch and submitit)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of one comparison per variant (default 3)")
    p.add_argument("--tiny", action="store_true", help="tiny runs, one round: check that every variant works")
    p.add_argument("--epochs", type=int, help="CPU mode: epochs per run (default 10: runs of a few seconds)")
    p.add_argument("--keep", metavar="DIR", help="keep the output folders here (default: a temporary folder)")
    a = p.parse_args()
    if a.slurm and shutil.which("sbatch") is None:
        sys.exit("--slurm: sbatch not found (scripts/local-slurm.sh up starts a one-node cluster)")
    repeats = 1 if a.tiny else a.repeats
    if a.epochs is not None and (a.mode != "cpu" or a.epochs < 1):
        sys.exit("--epochs: a whole number >= 1, in CPU mode")
    todo = variants(a.mode, a.slurm, a.tiny, a.epochs)
    startup = startup_seconds()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="ncguide-launch-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {name: [] for name in todo}
    summaries: dict[str, dict] = {}
    for r in range(repeats):
        for i, (name, args) in enumerate(todo.items()):
            out = root / f"round{r}-variant{i}"
            times[name].append(measure(args, out))
            summaries.setdefault(name, without_wall_clock(json.loads((out / "summary.json").read_text())))
            print(f"round {r + 1}/{repeats}, {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)

    import torch

    first = next(iter(todo))
    base = statistics.median(times[first])
    device = torch.cuda.get_device_name() if a.mode == "gpu" and torch.cuda.is_available() else platform.processor()
    print(f"# one comparison, wall-clock ({a.mode}{', tiny' if a.tiny else ''})\n")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {cores()} cores, {device or platform.machine()}, "
          f"torch {torch.__version__}, {repeats} round{'s' if repeats > 1 else ''}, interleaved; a new process's "
          f"start-up (imports): {startup:.1f} s\n")
    print(f"comparison: `ncguide compare {' '.join(todo[first])}`\n")
    print("| launcher | median s | min–max s | × first | same summary.json |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        same = "yes" if summaries[name] == summaries[first] else "no (rounding)"
        print(f"| {name} | {med:.1f} | {min(ts):.1f}–{max(ts):.1f} | {med / base:.2f} | {same} |")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# One prepared run on a GPU machine: the CUDA tests, then the solver and overhead benchmarks.
# Uses the machine's own python3/torch; the package is taken from src/ (no install needed).
#   bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider tests/ 2>&1 | tee "$out/cuda_tests.txt"
python3 benchmarks/solver.py --device cuda --reps 4 2>&1 | tee "$out/solver_cuda.md"
python3 benchmarks/overhead.py --device cuda --reps 10 --warmup 3 \
  --methods standard,fixed-etf,nearest-etf,nearest-etf:polar-gram,nearest-etf:polar-ns,nearest-etf-nograd,standard-plain 2>&1 \
  | tee "$out/overhead_cuda.md"

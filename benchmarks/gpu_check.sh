#!/usr/bin/env bash
# One prepared run on a GPU machine, most important first: the CUDA tests, the warm route's solver cost
# (regular step, refresh = Gram route, operator counts), then the training-step ratios to `standard`
# with the warm route (ResNet-18/K=100 batch 128, ResNet-50/K=1000 batch 64 and 256), then the full tables.
# Uses the machine's own python3/torch; the package is taken from src/ (no install needed).
#   bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider tests/ 2>&1 | tee "$out/cuda_tests.txt"
python3 benchmarks/solver.py --device cuda --shapes 512x100,2048x1000 --reps 10 --warm-only 2>&1 \
  | tee "$out/solver_cuda_warm.md"
python3 benchmarks/overhead.py --device cuda --reps 10 --warmup 20 --settings resnet18-100,resnet50-1000 \
  --methods standard,nearest-etf,nearest-etf:warm 2>&1 | tee "$out/overhead_cuda_warm.md"
python3 benchmarks/overhead.py --device cuda --reps 6 --warmup 10 --settings resnet50-1000 --batch-size 256 \
  --methods standard,nearest-etf,nearest-etf:warm 2>&1 | tee "$out/overhead_cuda_warm_b256.md"
python3 benchmarks/solver.py --device cuda --reps 4 --solvers polar,polar-gram,polar-ns 2>&1 | tee "$out/solver_cuda.md"
python3 benchmarks/overhead.py --device cuda --reps 10 --warmup 3 \
  --methods standard,fixed-etf,nearest-etf,nearest-etf:polar-ns,nearest-etf:warm,nearest-etf-nograd \
  2>&1 | tee "$out/overhead_cuda.md"

#!/usr/bin/env bash
# One prepared run on a GPU machine: the CUDA tests, then the solver and overhead benchmarks: first the
# open measurements of BENCHMARKS.md (polar-ns against the default Gram route; ResNet-50 also at the
# batch of configs/imagenet-resnet50.yaml), the full tables after.
# Uses the machine's own python3/torch; the package is taken from src/ (no install needed).
#   bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider tests/ 2>&1 | tee "$out/cuda_tests.txt"
python3 benchmarks/solver.py --device cuda --dtype float32 --shapes 512x100,2048x1000 --reps 10 \
  --solvers polar-gram,polar-ns 2>&1 | tee "$out/solver_cuda_polar_ns.md"
python3 benchmarks/overhead.py --device cuda --reps 10 --warmup 3 --settings resnet18-100,resnet50-1000 \
  --methods standard,nearest-etf,nearest-etf:polar-ns 2>&1 | tee "$out/overhead_cuda_polar_ns.md"
python3 benchmarks/overhead.py --device cuda --reps 6 --warmup 2 --settings resnet50-1000 --batch-size 256 \
  --methods standard,nearest-etf,nearest-etf:polar-ns 2>&1 | tee "$out/overhead_cuda_resnet50_b256.md"
python3 benchmarks/solver.py --device cuda --reps 4 2>&1 | tee "$out/solver_cuda.md"
python3 benchmarks/overhead.py --device cuda --reps 10 --warmup 3 \
  --methods standard,fixed-etf,nearest-etf,nearest-etf:polar,nearest-etf:polar-ns,nearest-etf-nograd,standard-plain \
  2>&1 | tee "$out/overhead_cuda.md"

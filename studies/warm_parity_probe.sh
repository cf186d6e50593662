#!/usr/bin/env bash
# Controls for studies/warm_parity.sh on MNIST-1D, where the final metrics of exact and warm runs differ
# per seed from epoch 1 on: is that the warm route, or what any rounding-level change of the solve does
# to this training (Adam, batch norm)?
#   bash studies/warm_parity_probe.sh [OUTROOT]        (default: warm-parity-out; the same root as warm_parity.sh)
# - OUTROOT/mnist1d/exact-svd: the exact SVD route (solver=polar) instead of the default Gram route, seeds 0-4 —
#   two exact solvers that differ only in rounding;
# - OUTROOT/mnist1d-seeds5-14/{exact,warm}: ten more seeds of the parity comparison.
# Tables: python studies/warm_parity_table.py OUTROOT --settings mnist1d --b exact-svd
#         python studies/warm_parity_table.py OUTROOT --settings mnist1d-seeds5-14
set -euo pipefail
out=${1:-warm-parity-out}
py=${PYTHON:-.venv/bin/python}
cfg=configs/mnist1d.yaml
"$py" -m ncguide compare --config $cfg --methods nearest-etf --seeds 5 --out "$out/mnist1d/exact-svd" \
  --set device=cpu --set solver=polar
"$py" -m ncguide compare --config $cfg --methods nearest-etf --seeds 5,6,7,8,9,10,11,12,13,14 \
  --out "$out/mnist1d-seeds5-14/exact" --set device=cpu
"$py" -m ncguide compare --config $cfg --methods nearest-etf --seeds 5,6,7,8,9,10,11,12,13,14 \
  --out "$out/mnist1d-seeds5-14/warm" --set device=cpu --set solver=warm

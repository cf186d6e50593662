#!/usr/bin/env bash
# Controls for studies/warm_parity.sh on MNIST-1D and the Fashion-MNIST subset, where exact and warm runs of
# the same seed differ from epoch 1 on: is a difference in the final metrics the warm route, or what any
# rounding-level change of the solve does to these trainings (Adam, batch norm)?
#   bash studies/warm_parity_probe.sh [OUTROOT]        (default: warm-parity-out; the same root as warm_parity.sh)
# - OUTROOT/<setting>/exact-svd: the exact SVD route (solver=polar) instead of the default Gram route, seeds 0-4:
#   two exact solvers that differ only in rounding;
# - OUTROOT/<setting>-more-seeds/{exact,warm}: more seeds of the parity comparison (MNIST-1D 5-14, Fashion-MNIST 5-9).
# Tables: python studies/warm_parity_table.py OUTROOT --settings mnist1d,fashion-mnist --b exact-svd
#         python studies/warm_parity_table.py OUTROOT --settings mnist1d-more-seeds,fashion-mnist-more-seeds
set -euo pipefail
out=${1:-warm-parity-out}
py=${PYTHON:-.venv/bin/python}
for setting in mnist1d fashion-mnist; do
  if [ $setting = mnist1d ]; then more=5,6,7,8,9,10,11,12,13,14; else more=5,6,7,8,9; fi
  "$py" -m ncguide compare --config $setting --methods nearest-etf --seeds 5 \
    --out "$out/$setting/exact-svd" --set device=cpu --set solver=polar
  "$py" -m ncguide compare --config $setting --methods nearest-etf --seeds $more \
    --out "$out/$setting-more-seeds/exact" --set device=cpu
  "$py" -m ncguide compare --config $setting --methods nearest-etf --seeds $more \
    --out "$out/$setting-more-seeds/warm" --set device=cpu --set solver=warm
done
# as in convergence.sh: Fashion-MNIST's time to 97% training accuracy
for d in fashion-mnist/exact-svd fashion-mnist-more-seeds/exact fashion-mnist-more-seeds/warm; do
  "$py" -m ncguide report "$out/$d" --train-acc-threshold 0.97
done

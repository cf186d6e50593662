#!/usr/bin/env bash
# Follow-up to the convergence study: does the nearest-ETF head's advantage depend on the
# learning rate or on stratified batches (the paper draws every class into every batch)?
# Same budget for every method: 3 methods x 3 seeds per probe; nothing is tuned per method.
#   bash studies/sensitivity.sh [OUTROOT]        (default: sensitivity-out; ~10 min on 2 CPU cores)
set -euo pipefail
out=${1:-sensitivity-out}
py=${PYTHON:-.venv/bin/python}
methods=standard,fixed-etf,nearest-etf
run() { name=$1; shift; echo "== $name"; "$py" -m ncguide compare --methods "$methods" --seeds 3 --out "$out/$name" --set device=cpu "$@"; }
run ufm-k100-lr0.1          --config ufm-k100 --epochs 100 --lr 0.1
run ufm-k100-lr0.1-strat    --config ufm-k100 --epochs 100 --lr 0.1 --set stratified=true
run mnist1d-strat           --config mnist1d --set stratified=true
run mnist1d-lr3e-3          --config mnist1d --lr 3e-3

#!/usr/bin/env bash
# Does the implicit gradient (through the nearest-ETF solve) help? (BENCHMARKS.md §3 and §4.)
# With the paper's running-mean schedule α_t = max(2/(t+1), α_min) the current batch's weight in the class
# means decays like 2/t, so the implicit gradient is scaled down with it. Here the means use a fixed α
# (mean_schedule: ema with ema_alpha; α = 1: the classifier is the ETF nearest to the current batch's
# class means) and nearest-etf is compared with nearest-etf-nograd (without the implicit gradient), with the
# standard head (no class means) as the reference in the paper-schedule probes. Same settings for every
# method, nothing tuned per method.
#   bash studies/gradient_study.sh [OUTROOT]     (default: gradient-study-out)
#   MNIST-1D (stratified batches, 5 seeds): 45 runs, ~9 min on 2 CPU cores.
#   Fashion-MNIST subset (stratified, 3 seeds; paper schedule and α = 1): 15 more runs of ~1 min, ~16 min
#   (FASHION=0 skips them).
# Tables: python studies/headline.py OUTROOT; python studies/study_table.py OUTROOT/*;
#         python studies/paired.py OUTROOT/*; python studies/curves.py OUTROOT/*
set -euo pipefail
out=${1:-gradient-study-out}
py=${PYTHON:-.venv/bin/python}
run() { name=$1; methods=$2; seeds=$3; shift 3; echo "== $name"
        "$py" -m ncguide compare --methods "$methods" --seeds "$seeds" --out "$out/$name" --set device=cpu "$@"; }
pair=nearest-etf,nearest-etf-nograd
m1d=(--config mnist1d --set stratified=true)
run mnist1d-strat-paper   standard,$pair 5 "${m1d[@]}"
for a in 0.1 0.5 1.0; do
  run "mnist1d-strat-ema$a" $pair 5 "${m1d[@]}" --set mean_schedule=ema --set ema_alpha=$a
done
if [[ "${FASHION:-1}" == 1 ]]; then
  fm=(--config fashion-mnist --set stratified=true)
  run fashion-strat-paper standard,$pair 3 "${fm[@]}"
  run fashion-strat-ema1.0 $pair 3 "${fm[@]}" --set mean_schedule=ema --set ema_alpha=1.0
  # time to 97% training accuracy for this subset, as in convergence.sh (standard reaches 99% only near epoch 23)
  for d in fashion-strat-paper fashion-strat-ema1.0; do "$py" -m ncguide report "$out/$d" --train-acc-threshold 0.97; done
fi

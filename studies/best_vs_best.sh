#!/usr/bin/env bash
# Best against best, with a selection rule that unstable learning rates cannot win: the paper's three heads,
# each tuned on the same learning-rate grid, selected by `sustained` (the first epoch from which training
# accuracy stays at the threshold to the end of the run; median over 3 selection seeds, 1000-1002), grids
# extended up to twice until every winner is interior (--extend-edges 2), then 8 report seeds (0-7) at each
# method's winner; the report opens with the verdict (nearest-ETF against the best other method: ratio of
# median epochs, bootstrap 95% interval, permutation p-value). See `ncguide compare --help`.
#
#   studies/best_vs_best.sh [OUT] [SETTING...]     # default OUT studies/results/best-vs-best
#
# Settings (our configs; UFMs with 100 samples per class, as the paper's UFM, so that an epoch is more than
# two steps and the thresholds are not reached at epoch 1 by every method):
#   mnist1d          Adam, 30 epochs, grid 1e-3,3e-3,1e-2          ~40 min on 2 idle CPU cores (JOBS=2)
#   ufm-k10          SGD, 200 epochs, grid 0.3,1,3,10              ~30 min
#   ufm-k100         SGD, 200 epochs, grid 0.3,1,3,10              ~4 h: a GPU's job (DEVICE=cuda JOBS=8)
#   fashion-subset   Adam, 97% threshold, grid 1e-3,3e-3,1e-2      ~2 h
# JOBS=<n> (env) trains n runs at once; DEVICE (env, default cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-studies/results/best-vs-best}
shift || true
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(mnist1d ufm-k10 ufm-k100 fashion-subset)

compare() {  # compare NAME ARGS...
  local name=$1; shift
  echo "== $name: $(date -u +%FT%TZ)"
  "$PY" -m ncguide compare --out "$OUT/$name" --methods standard,fixed-etf,nearest-etf \
    --seeds 8 --selection-seeds 3 --selection-metric sustained --extend-edges 2 \
    --jobs "${JOBS:-1}" --set "device=${DEVICE:-cpu}" "$@" \
    > "$OUT/$name.log" 2>&1 || { echo "$name failed: see $OUT/$name.log"; return 1; }
  tail -n 12 "$OUT/$name.log"
}

mkdir -p "$OUT"
for s in "${SETTINGS[@]}"; do
  case $s in
    mnist1d) compare mnist1d --config mnist1d --grid lr=1e-3,3e-3,1e-2 ;;
    ufm-k10) compare ufm-k10 --config ufm-k10 --set samples_per_class=100 --grid lr=0.3,1,3,10 ;;
    ufm-k100) compare ufm-k100 --config ufm-k100 --set samples_per_class=100 --grid lr=0.3,1,3,10 ;;
    fashion-subset) compare fashion-subset --config fashion-mnist --train-acc-threshold 0.97 \
      --grid lr=1e-3,3e-3,1e-2 ;;
    *) echo "unknown setting $s"; exit 2 ;;
  esac
done

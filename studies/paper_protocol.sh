#!/usr/bin/env bash
# The paper's own protocol (src/ncguide/configs/paper/, docs/paper-protocol.md): AGD at gain 10, bias-free
# networks, batch 256, tau = 5, 5 seeds (1-5), the paper's table (training accuracy at epochs 50 and 200).
# Besides the paper's three heads it runs the two arms that separate its choices:
#   fixed ETF:          canonical (the paper's, `fixed-etf`) vs a random rotation (`fixed-etf-random`)
#   stratified batches: for nearest-ETF only (the paper's) vs for every method (`standard-strat`,
#                       `fixed-etf-strat`)
#
#   studies/paper_protocol.sh [OUT] [SETTING...]     # default OUT studies/results/paper-protocol
#
# Settings: ufm-k10 ufm-k100 ufm-k200 mnist1d fashion-subset, and mnist1d-noise20: MNIST-1D with 20% of its
# training labels flipped (studies/noisy_labels.py, seed 0; a regime whose training accuracy does not saturate
# within a few epochs), run with the paper's three heads only. EPOCHS=<n> (env) shortens every run, for a
# setting too slow for its machine (the report then says which epochs it has); JOBS=<n> runs n at once;
# DEVICE=cuda (default cpu).
# Cost per 200-epoch run on one quiet CPU thread (docs/paper-protocol.md measured them on a busy machine):
# ufm-k10 ~0.5 min, mnist1d ~2-4 min, ufm-k100 ~6-25 min, fashion-subset ~25 min, ufm-k200 ~1 h.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-studies/results/paper-protocol}
shift || true
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(ufm-k10 mnist1d ufm-k100 fashion-subset ufm-k200)
METHODS=standard,fixed-etf,fixed-etf-random,nearest-etf,standard-strat,fixed-etf-strat
EXTRA=()
[ -n "${EPOCHS:-}" ] && EXTRA+=(--set "epochs=$EPOCHS" --report-epochs "$(( EPOCHS / 4 > 0 ? EPOCHS / 4 : 1 )),$EPOCHS")
[ -n "${JOBS:-}" ] && EXTRA+=(--jobs "$JOBS")

mkdir -p "$OUT"
ARMS=(--methods "$METHODS" --variant fixed-etf-random:method=fixed-etf,fixed_etf=random
      --variant standard-strat:method=standard,stratified=true
      --variant fixed-etf-strat:method=fixed-etf,stratified=true)
for s in "${SETTINGS[@]}"; do
  echo "== $s: $(date -u +%FT%TZ)"
  case $s in
    mnist1d-noise20)
      [ -f "$OUT/mnist1d-noise20.npz" ] || "$PY" studies/noisy_labels.py "$OUT/mnist1d-noise20.npz" --noise 0.2 --seed 0
      ARGS=(--config paper/mnist1d --set "dataset=npz:$OUT/mnist1d-noise20.npz") ;;  # the paper's three heads
    *) ARGS=(--config "paper/$s" "${ARMS[@]}") ;;
  esac
  "$PY" -m ncguide compare "${ARGS[@]}" --out "$OUT/$s" \
    --set "device=${DEVICE:-cpu}" "${EXTRA[@]}" > "$OUT/$s.log" 2>&1 || { echo "$s failed: see $OUT/$s.log"; exit 1; }
  tail -n 12 "$OUT/$s.log"
done

#!/usr/bin/env bash
# Choosing nearest-ETF's freeze_after from the SELECTION seeds only (1000, 1001): nearest-etf at the
# learning rate the tuned study selected for it (TUNED/<setting>/selection.json), without a freeze and
# frozen after 1, 3 and 10 epochs. Run after studies/tuned.sh has finished its selection on a setting.
#
#   studies/freeze_choice.sh TUNED OUT [SETTING...]   # default settings: mnist1d mnist1d-stratified ufm-k10
#
# Cost on 2 CPU cores: ~3 min per MNIST-1D setting, ~1 min for UFM K = 10.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TUNED=$1
OUT=$2
shift 2
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(mnist1d mnist1d-stratified ufm-k10)
mkdir -p "$OUT"
for s in "${SETTINGS[@]}"; do
  case $s in
    mnist1d) args=(--config mnist1d) ;;
    mnist1d-stratified) args=(--config mnist1d --set stratified=true) ;;
    ufm-k10) args=(--config ufm-k10 --set device=cpu) ;;
    ufm-k100) args=(--config ufm-k100 --set device=cpu) ;;
    fashion-subset) args=(--config fashion-mnist --set device=cpu --train-acc-threshold 0.97) ;;
    *) echo "unknown setting $s"; exit 2 ;;
  esac
  lr=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['selected']['nearest-etf']['lr'])" \
       "$TUNED/$s/selection.json")
  echo "== $s: nearest-etf at its selected lr $lr, seeds 1000,1001"
  "$PY" -m ncguide compare "${args[@]}" --set lr="$lr" --seeds 1000,1001 --out "$OUT/$s" \
    --methods nearest-etf,freeze-1,freeze-3,freeze-10 \
    --variant freeze-1:method=nearest-etf,freeze_after=1 --variant freeze-3:method=nearest-etf,freeze_after=3 \
    --variant freeze-10:method=nearest-etf,freeze_after=10 > "$OUT/$s.log" 2>&1
  tail -n 7 "$OUT/$s.log"
done

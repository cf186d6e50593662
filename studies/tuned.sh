#!/usr/bin/env bash
# Best against best: every method tuned on the same learning-rate grid (4 log-spaced values bracketing
# the config's own), 2 selection seeds (1000, 1001) per grid point, then 5 report seeds (0-4) at each
# method's selected rate (`ncguide compare --grid`, see src/ncguide/experiments/compare.py). The
# selection ranks by epochs to 99% training accuracy (Fashion-MNIST: 97%, as in studies/convergence.sh;
# its runs end near 98.5%).
#
#   studies/tuned.sh [OUT] [SETTING...]     # default OUT studies/results/tuned, every setting
#
# Settings and their cost on 2 idle CPU cores (52-60 runs each with the four methods below):
#   mnist1d mnist1d-stratified   ~15 min each     ufm-k10 ~5 min     ufm-k100 ~1 h
#   fashion-subset               ~1.5 h           fashion-full (60k images, 2-D CNN, 10 epochs) ~3-4 h
# METHODS (env) overrides the methods; FREEZE_AFTER (env, epochs; default 1) sets the nearest-etf-freeze variant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-studies/results/tuned}
shift || true
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(mnist1d mnist1d-stratified ufm-k10 ufm-k100 fashion-subset fashion-full)
FREEZE_AFTER=${FREEZE_AFTER:-1}  # chosen on selection seeds: studies/freeze_choice.sh, BENCHMARKS.md §5
METHODS=${METHODS:-standard,fixed-etf,nearest-etf,nearest-etf-freeze}

compare() {  # compare NAME ARGS...
  local name=$1; shift
  echo "== $name: $(date -u +%FT%TZ)"
  local variant=()
  [[ ",$METHODS," == *",nearest-etf-freeze,"* ]] && variant=(--variant "nearest-etf-freeze:method=nearest-etf,freeze_after=$FREEZE_AFTER")
  "$PY" -m ncguide compare --out "$OUT/$name" --methods "$METHODS" --seeds 5 --selection-seeds 2 \
    "${variant[@]}" "$@" \
    > "$OUT/$name.log" 2>&1 || { echo "$name failed: see $OUT/$name.log"; return 1; }
  tail -n 8 "$OUT/$name.log"
}

mkdir -p "$OUT"
for s in "${SETTINGS[@]}"; do
  case $s in
    # 3e-2 added after standard's winner came out at 1e-2, the grid's edge (the grid must bracket every winner)
    mnist1d) compare mnist1d --config mnist1d --grid lr=3e-4,1e-3,3e-3,1e-2,3e-2 ;;
    mnist1d-stratified) compare mnist1d-stratified --config mnist1d --set stratified=true \
      --grid lr=3e-4,1e-3,3e-3,1e-2 ;;
    # 10 and 30 added after every method's winner came out at 3, then fixed-etf's at 10 (the grid's edges)
    ufm-k10) compare ufm-k10 --config ufm-k10 --set device=cpu --grid lr=0.1,0.3,1,3,10,30 ;;
    # 10 added as for K = 10
    ufm-k100) compare ufm-k100 --config ufm-k100 --set device=cpu --grid lr=0.1,0.3,1,3,10 ;;
    fashion-subset) compare fashion-subset --config fashion-mnist --set device=cpu \
      --train-acc-threshold 0.97 --grid lr=3e-4,1e-3,3e-3,1e-2 ;;
    fashion-full) compare fashion-full --config fashion-mnist --set device=cpu \
      --set train_per_class=null --set test_per_class=null --set epochs=10 --train-acc-threshold 0.97 \
      --grid lr=3e-4,1e-3,3e-3,1e-2 ;;
    *) echo "unknown setting $s"; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# More optimiser steps per image (issue 19's candidate): p_step 4 instead of 2, at the default run's wall
# time (1165 s of training, the default's seed-1 run at one thread), seeds 0 and 1 side by side (one torch
# thread each), evaluated like docs/experiments/full. Results: docs/experiments/full/pstep4_seed*.json;
# table: python scripts/experiments_table.py docs/experiments/full
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=docs/experiments/full
mkdir -p "$OUT"
for seed in 0 1; do
  [ -f "$OUT/pstep4_seed${seed}.json" ] && continue
  .venv/bin/python scripts/experiment.py pstep4 --minutes 19.4 --seed "$seed" --threads 1 --out "$OUT" \
    --set policy.p_step=4 > "$OUT/pstep4_seed${seed}.log" 2>&1 &
done
wait
# Third seed: p_step 4 and the default side by side under the same conditions and wall budget.
if [ ! -f "$OUT/pstep4_seed2.json" ] || [ ! -f "$OUT/default_wall_seed2.json" ]; then
  .venv/bin/python scripts/experiment.py pstep4 --minutes 19.4 --seed 2 --threads 1 --out "$OUT" \
    --set policy.p_step=4 > "$OUT/pstep4_seed2.log" 2>&1 &
  .venv/bin/python scripts/experiment.py default_wall --minutes 19.4 --seed 2 --threads 1 --out "$OUT" \
    > "$OUT/default_wall_seed2.log" 2>&1 &
  wait
fi

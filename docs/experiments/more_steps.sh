#!/usr/bin/env bash
# Beyond p_step 4 (issue 19, fourth session): p_step 8, and p_step 4 with a doubled learning rate, each at
# the wall time of docs/experiments/pstep.sh (19.4 min of training, one torch thread, two runs side by side),
# seeds 0 and 1, evaluated like docs/experiments/full (16 fixed seeds per prompt). The p_step 4 arm of
# pstep.sh (seeds 0-2) is the reference. Table: python scripts/experiments_table.py docs/experiments/full
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=docs/experiments/full
mkdir -p "$OUT"
for seed in 0 1; do
  pids=()
  if [ ! -f "$OUT/pstep8_seed${seed}.json" ]; then
    .venv/bin/python scripts/experiment.py pstep8 --minutes 19.4 --seed "$seed" --threads 1 --out "$OUT" \
      --set policy.p_step=8 > "/tmp/pstep8_seed${seed}.log" 2>&1 & pids+=($!)
  fi
  if [ ! -f "$OUT/pstep4_lr2x_seed${seed}.json" ]; then
    .venv/bin/python scripts/experiment.py pstep4_lr2x --minutes 19.4 --seed "$seed" --threads 1 --out "$OUT" \
      --set policy.p_step=4 --set policy.learning_rate=2.0e-3 > "/tmp/pstep4_lr2x_seed${seed}.log" 2>&1 & pids+=($!)
  fi
  for pid in "${pids[@]}"; do wait "$pid"; done
done

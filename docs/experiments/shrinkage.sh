#!/usr/bin/env bash
# Value shrinkage (issue 19, fourth session): the default with value_shrinkage on, at the wall time of
# docs/experiments/pstep.sh (19.4 min of training, one torch thread, two runs side by side), seeds 0 and 1,
# evaluated like docs/experiments/full. Reference: the pstep4 runs of pstep.sh (the default's settings).
# Table: python scripts/experiments_table.py docs/experiments/full
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=docs/experiments/full
mkdir -p "$OUT"
for seed in 0 1; do
  [ -f "$OUT/shrinkage_seed${seed}.json" ] && continue
  .venv/bin/python scripts/experiment.py shrinkage --minutes 19.4 --seed "$seed" --threads 1 --out "$OUT" \
    --set policy.p_step=4 --set policy.learning_rate=1.0e-3 --set value.shrinkage=true > "/tmp/shrinkage_seed${seed}.log" 2>&1 &
done
wait

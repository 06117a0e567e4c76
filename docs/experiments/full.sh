#!/usr/bin/env bash
# Full-length (75-round, the default's sample budget) runs of the multi-prompt default and of a doubled
# LoRA learning rate, one run at a time with one torch thread, evaluated on the headroom prompts' 16
# fixed seeds. Results: docs/experiments/full/*.json; table: python scripts/experiments_table.py docs/experiments/full
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=docs/experiments/full
mkdir -p "$OUT"
run() {  # NAME SEED OVERRIDES...
  local name=$1 seed=$2; shift 2
  [ -f "$OUT/${name}_seed${seed}.json" ] && return 0
  .venv/bin/python scripts/experiment.py "$name" --rounds 75 --seed "$seed" --threads 1 --out "$OUT" "$@" \
    > "$OUT/${name}_seed${seed}.log" 2>&1
}
run lr2x 0 --set policy.learning_rate=2.0e-3
run lr2x 1 --set policy.learning_rate=2.0e-3
run default 1

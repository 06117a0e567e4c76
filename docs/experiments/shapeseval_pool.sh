#!/usr/bin/env bash
# Issue 28 pilot: train on ShapesEval's training pool (its `train` prompts; `validation` as the held-out
# split; the test prompts never enter the run), then score the LoRA on ShapesEval's test prompts.
# Equal reward calls per run (864 final images). One run at a time, in a copy of the project (data/ of
# the checkout untouched); finished runs are skipped. Results: docs/experiments/shapeseval_pool/*.json.
#   bash docs/experiments/shapeseval_pool.sh [ARM ...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/docs/experiments/shapeseval_pool
WORK=${WORK:-/tmp/shapeseval_pool}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MLFLOW_TRACKING_URI=file://$WORK/mlruns
declare -A ARMS=(
  [default]=""                                                   # conf/base's update: 54 rounds x 4 prompts x 4
  [groups8]="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=27"
)
rm -rf "$WORK/project" && mkdir -p "$WORK/project"
tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=mlruns --exclude=mlflow.db --exclude='data/07_model_output' -cf - . \
  | tar -C "$WORK/project" -xf -
cd "$WORK/project"
# The pool as a prompt file: train -> train, validation -> heldout, test left out.
"$ROOT/.venv/bin/python" - <<'PY'
import pandas as pd
table = pd.read_csv("data/01_raw/prompts/shapeseval.csv")
pool = table[table["split"] != "test"].assign(split=lambda t: t["split"].replace({"validation": "heldout"}))
pool[["prompt", "category", "split"]].to_csv("data/01_raw/prompts/shapeseval_pool.csv", index=False)
PY
arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=(default groups8)
for arm in "${arms[@]}"; do
  for seed in 0 1 2; do
    result="$OUT/${arm}_seed${seed}.json"
    [ -f "$result" ] && { echo "skip $result"; continue; }
    extra=${ARMS[$arm]}
    params="prompts.path=data/01_raw/prompts/shapeseval_pool.csv,finetune.rl.seed=$seed,finetune.checkpoint_dir=$WORK/ckpt/${arm}_${seed}${extra:+,$extra}"
    start=$(date +%s)
    PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --pipelines finetune --params "$params" > "$WORK/${arm}_${seed}.finetune.log" 2>&1
    PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --pipelines shapeseval > "$WORK/${arm}_${seed}.shapeseval.log" 2>&1
    cp data/08_reporting/finetune_history.csv "$OUT/${arm}_seed${seed}_history.csv"
    cp data/08_reporting/shapeseval.json "$result.tmp" && mv "$result.tmp" "$result"
    echo "$arm seed $seed: $(( $(date +%s) - start )) s"
  done
done

#!/usr/bin/env bash
# Issue 31's pilot: how long must a single-prompt run be for the claims to show? One seed per arm, one
# category's rule-chosen prompt (scripts/paper_claims.py --single-prompt-path), the paper's single-prompt
# settings (`--env shapes_single`) with each arm's overrides (scripts/claims_arms.yml), ROUNDS rounds of 16
# reward calls, then the evaluation (16 seeds, base and fine-tuned from the same noise). In a copy of the
# committed code (REV, default HEAD); finished arms are skipped. Results: docs/experiments/claims_pilot/.
#   CATEGORY=location ROUNDS=180 SEED=0 bash docs/experiments/claims_pilot.sh rl rl_kl
# EXTRA (comma-separated key=value) adds settings to every arm of the call, TAG names them in the file names:
#   EXTRA=finetune.sft.steps=1000 TAG=steps1000 bash docs/experiments/claims_pilot.sh sft
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/docs/experiments/claims_pilot
WORK=${WORK:-/tmp/claims_pilot}
CATEGORY=${CATEGORY:-location} ROUNDS=${ROUNDS:-180} SEED=${SEED:-0}
PY="$ROOT/.venv/bin/python"
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MLFLOW_TRACKING_URI=file://$WORK/mlruns
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
[ $# -gt 0 ] || { echo "name the arms, e.g. rl rl_kl" >&2; exit 2; }
for arm in "$@"; do "$PY" "$ROOT/scripts/paper_claims.py" --arm-overrides "$arm" > /dev/null; done  # unknown arm: error
if [ ! -d "$WORK/project" ]; then
  mkdir -p "$WORK/project" && git -C "$ROOT" archive "${REV:-HEAD}" | tar -C "$WORK/project" -xf -
fi
cd "$WORK/project"
prompt_file=$("$PY" "$ROOT/scripts/paper_claims.py" --single-prompt-path "$CATEGORY")
[ -f "$prompt_file" ] || "$PY" "$ROOT/scripts/paper_claims.py" --write-single-prompts > /dev/null
kedro() { PYTHONPATH=src "$ROOT/.venv/bin/kedro" "$@"; }
common="prompts.path=$prompt_file"
if [ ! -f "$WORK/base_$CATEGORY.done" ]; then
  kedro run --env shapes_single --pipelines prompts --params "$common" > "$WORK/base_$CATEGORY.log" 2>&1
  kedro run --env shapes_single --pipelines pretrained_samples --params "$common" >> "$WORK/base_$CATEGORY.log" 2>&1
  touch "$WORK/base_$CATEGORY.done"
fi
for arm in "$@"; do
  name="${arm}${TAG:+-$TAG}_${CATEGORY}_r${ROUNDS}_s${SEED}"
  [ -f "$OUT/$name.metrics.json" ] && { echo "skip $name"; continue; }
  overrides=$("$PY" "$ROOT/scripts/paper_claims.py" --arm-overrides "$arm" | tr ' ' ',')
  params="$common,finetune.rl.seed=$SEED,finetune.rl.runtime.num_rounds=$ROUNDS,finetune.checkpoint_dir=$WORK/ckpt/$name${overrides:+,$overrides}${EXTRA:+,$EXTRA}"
  start=$(date +%s)
  kedro run --env shapes_single --pipelines finetune --params "$params" > "$WORK/$name.log" 2>&1
  kedro run --env shapes_single --pipelines evaluate --params "$common" >> "$WORK/$name.log" 2>&1
  cp data/08_reporting/shapes_single/finetune_history.csv "$OUT/$name.history.csv" 2>/dev/null || true
  cp data/08_reporting/shapes_single/metrics.json "$OUT/$name.metrics.json.tmp" && mv "$OUT/$name.metrics.json.tmp" "$OUT/$name.metrics.json"
  echo "$name: $(( $(date +%s) - start )) s"
done

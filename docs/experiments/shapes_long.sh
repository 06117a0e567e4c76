#!/usr/bin/env bash
# Issue 28's long run: `kedro run --env shapes_long` (the default update for 240 rounds = 7,680 reward calls,
# ShapesEval's probe every 20 rounds), then ShapesEval's full test-set score of its LoRA. Runs the committed
# code (REV, default HEAD) in a copy of the project, so the checkout's data/ is untouched; results are copied to
# docs/experiments/shapes_long/.   THREADS=1 SEED=0 bash docs/experiments/shapes_long.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/docs/experiments/shapes_long
WORK=${WORK:-/tmp/shapes_long}
SEED=${SEED:-0}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MLFLOW_TRACKING_URI=file://$WORK/mlruns
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
[ -d "$WORK/project" ] || { mkdir -p "$WORK/project" && git -C "$ROOT" archive "${REV:-HEAD}" | tar -C "$WORK/project" -xf -; }
cd "$WORK/project"
start=$(date +%s)
PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --env shapes_long --pipelines prompts >> "$WORK/finetune.log" 2>&1
# A rerun resumes from the last checkpoint (every 10 rounds), so a stopped session loses at most 10 rounds.
PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --env shapes_long --pipelines finetune --params "finetune.rl.seed=$SEED" \
  >> "$WORK/finetune.log" 2>&1
echo "finetune: $(( $(date +%s) - start )) s"
PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --env shapes_long --pipelines shapeseval >> "$WORK/shapeseval.log" 2>&1
echo "total: $(( $(date +%s) - start )) s"
for f in finetune_history.csv finetune_probe.csv finetune_probe_curve.png shapeseval.md shapeseval.png; do
  [ -f "data/08_reporting/shapes_long/$f" ] && cp "data/08_reporting/shapes_long/$f" "$OUT/seed${SEED}_$f"
done
# Named as scripts/shapeseval_table.py reads it: python scripts/shapeseval_table.py docs/experiments/shapes_long
cp data/08_reporting/shapes_long/shapeseval.json "$OUT/shapes_long_seed${SEED}.json"
ls "$OUT"

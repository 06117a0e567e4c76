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
V4="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.rollout.share_initial_noise=false,finetune.rl.policy.p_step=1,finetune.rl.policy.accum=20,finetune.rl.runtime.num_rounds=60"
G8SEL="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=60,prompts.path=data/01_raw/prompts/shapeseval_pool_selected.csv"
declare -A ARMS=(
  # The fifth session's conf/base update (54 rounds x 4 prompts x 4), spelt out since conf/base changed.
  [default]="finetune.rl.rollout.g_batch=16,finetune.rl.rollout.trajectories_per_prompt=4,finetune.rl.runtime.num_rounds=54"
  [groups8]="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=27"
  # "Few, large, many-prompt updates" (SUCCESSORS.md, V4): 4 prompts x 8 trajectories from independent x_T, one
  # Adam step per round over all 640 transitions, 60 rounds = 1,920 reward calls.
  [v4]="$V4"
  # The same on the rule-chosen part of the pool: base solve rate in [0.05, 0.95] over 16 seeds.
  [v4sel]="$V4,prompts.path=data/01_raw/prompts/shapeseval_pool_selected.csv"
  # Groups of 8 from a shared x_T with the default's 4 policy steps a round, at the full budget: 60 rounds x 32 =
  # 1,920 reward calls, on the rule-chosen pool.
  [g8sel]="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=60,prompts.path=data/01_raw/prompts/shapeseval_pool_selected.csv"
  # The same with a 3x larger step (one Adam step a round: 60 steps in all).
  # DiffusionNFT's forward-process objective (policy.objective: nft, dpok.rl.nft) in place of the clipped ratio,
  # on g8sel's rounds: the same prompts, groups, steps and learning rate; the group mean is the only baseline.
  [nft]="$G8SEL,finetune.rl.policy.objective=nft,finetune.rl.value.enabled=false"
  [nft_lr3]="$G8SEL,finetune.rl.policy.objective=nft,finetune.rl.value.enabled=false,finetune.rl.policy.learning_rate=0.003"
  # issue 29: the new default (g8sel) with the diffusion model's passes in bf16 (runtime.precision), at equal reward calls
  [g8sel_bf16]="$G8SEL,finetune.rl.runtime.precision=bf16"
  # twice the prompts in every round and policy step (8 prompts x 8 trajectories), half the rounds: the same 1,920 calls
  [g8sel_p8]="finetune.rl.rollout.g_batch=64,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=30,prompts.path=data/01_raw/prompts/shapeseval_pool_selected.csv"
  # one category's part of the rule-chosen pool (26 location prompts): does the update learn a skill from many prompts
  # of one kind and carry it to the category's unseen test prompts? (g8sel's settings otherwise)
  [g8sel_location]="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=60,prompts.path=data/01_raw/prompts/shapeseval_pool_selected_location.csv"
  # the same, LoRA on the cross-attention's keys and values only (rank 8; kedro --env lora_kv, written below): a
  # change there is a function of the prompt's tokens, the same for every prompt holding "bottom"
  [g8sel_location_kv]="finetune.rl.rollout.g_batch=32,finetune.rl.rollout.trajectories_per_prompt=8,finetune.rl.runtime.num_rounds=60,prompts.path=data/01_raw/prompts/shapeseval_pool_selected_location.csv"
  [v4sel_lr3]="$V4,prompts.path=data/01_raw/prompts/shapeseval_pool_selected.csv,finetune.rl.policy.learning_rate=0.003"
)
# One thread by default: a second torch process on the same cores then slows neither by spin-waiting.
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
# The committed code (REV, default HEAD), not the working tree: edits made while runs go on do not leak in.
rm -rf "$WORK/project" && mkdir -p "$WORK/project"
git -C "$ROOT" archive "${REV:-HEAD}" | tar -C "$WORK/project" -xf -
cd "$WORK/project"
# The pool as a prompt file: train -> train, validation -> heldout, test left out.
"$ROOT/.venv/bin/python" - <<'PY'
import pandas as pd
table = pd.read_csv("data/01_raw/prompts/shapeseval.csv")
pool = table[table["split"] != "test"].assign(split=lambda t: t["split"].replace({"validation": "heldout"}))
pool[["prompt", "category", "split"]].to_csv("data/01_raw/prompts/shapeseval_pool.csv", index=False)
# Prompts with signal: the base model solves them sometimes (select_prompts' 16-seed table).
rates = pd.read_csv("data/08_reporting/headroom_candidates.csv").set_index("prompt")["solve_rate"]
chosen = pool[pool["prompt"].map(rates).between(0.05, 0.95)]
chosen[["prompt", "category", "split"]].to_csv("data/01_raw/prompts/shapeseval_pool_selected.csv", index=False)
print("selected pool:", chosen.groupby(["split", "category"]).size().to_dict())
for category, part in chosen.groupby("category"):  # one category's share, for the per-category arms
    part[["prompt", "category", "split"]].to_csv(f"data/01_raw/prompts/shapeseval_pool_selected_{category}.csv", index=False)
PY
# Settings --params cannot carry (lists): a Kedro environment per arm, written into the work copy.
declare -A ENVS=([g8sel_location_kv]=lora_kv)
mkdir -p conf/lora_kv
cat > conf/lora_kv/parameters_finetune.yml <<'YML'
finetune:
  rl:
    lora:
      rank: 8
      alpha: 8.0
      target_modules: [attn2.to_k, attn2.to_v]
YML
arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=(default groups8)
for arm in "${arms[@]}"; do
  for seed in ${SEEDS:-0 1 2}; do
    result="$OUT/${arm}_seed${seed}.json"
    [ -f "$result" ] && { echo "skip $result"; continue; }
    extra=${ARMS[$arm]}
    params="prompts.path=data/01_raw/prompts/shapeseval_pool.csv,finetune.rl.seed=$seed,finetune.checkpoint_dir=$WORK/ckpt/${arm}_${seed}${extra:+,$extra}"
    start=$(date +%s)
    env=${ENVS[$arm]:-local}
    PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --env "$env" --pipelines finetune --params "$params" > "$WORK/${arm}_${seed}.finetune.log" 2>&1
    PYTHONPATH=src "$ROOT/.venv/bin/kedro" run --env "$env" --pipelines shapeseval > "$WORK/${arm}_${seed}.shapeseval.log" 2>&1
    cp data/08_reporting/finetune_history.csv "$OUT/${arm}_seed${seed}_history.csv"
    cp data/08_reporting/shapeseval.json "$result.tmp" && mv "$result.tmp" "$result"
    echo "$arm seed $seed: $(( $(date +%s) - start )) s"
  done
done

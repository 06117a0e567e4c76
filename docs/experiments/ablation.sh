#!/usr/bin/env bash
# The ablation table of the multi-prompt default (docs/experiments.md): every arm changes one option of
# conf/base/parameters_finetune.yml (or sets the paper's values), two seeds each, equal wall time
# (MINUTES of training per run), two runs side by side with one torch thread each, then evaluation on the
# headroom prompts' 16 fixed seeds. Rerun one arm: scripts/experiment.py NAME --minutes M --seed S --set ...
# Results: docs/experiments/ablation/*.json; table: python scripts/experiments_table.py docs/experiments/ablation
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${MINUTES:-7}
OUT=docs/experiments/ablation
mkdir -p "$OUT"
run() {  # NAME SEED OVERRIDES...
  local name=$1 seed=$2; shift 2
  [ -f "$OUT/${name}_seed${seed}.json" ] && return 0  # kept from an earlier, interrupted pass
  .venv/bin/python scripts/experiment.py "$name" --minutes "$MINUTES" --seed "$seed" --out "$OUT" "$@" \
    > "$OUT/${name}_seed${seed}.log" 2>&1
}
# The paper's objective on the shapes world: raw rewards, independent trajectories (one per prompt draw),
# the value function on the latent, every step alike, α/β = 10/0.01 (official single-prompt ratio 1000);
# the learning rate, LoRA targets and clip width stay the shapes world's (SD's 1e-5 and 1e-4 move nothing
# in minutes on this model).
PAPER="--set advantage.normalisation=none --set rollout.trajectories_per_prompt=1 --set rollout.share_initial_noise=false \
--set value.features=latent --set value.shrinkage=false --set policy.step_weighting=none --set advantage.reward_weight=10 \
--set kl.weight=0.01"
ARMS=(
  "default|"
  "no_value_function|--set value.enabled=false"
  "value_on_latent|--set value.features=latent"
  "no_groups|--set advantage.normalisation=per_prompt --set rollout.share_initial_noise=false"
  "no_step_weighting|--set policy.step_weighting=none"
  "early_window|--set policy.train_step_window=[0,0.9]"
  "paper|$PAPER"
)
for arm in "${ARMS[@]}"; do
  name=${arm%%|*}; overrides=${arm#*|}
  # shellcheck disable=SC2086
  run "$name" 0 $overrides & run "$name" 1 $overrides
  wait
done

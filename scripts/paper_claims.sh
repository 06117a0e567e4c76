#!/usr/bin/env bash
# The paper's comparisons on the shapes world (docs/results.md), one DVC experiment per arm and seed.
#
#   scripts/paper_claims.sh [ARM ...]        arms: sft rl rl_kl rl_kl_v (default: all four)
#   SEEDS="0 1 2" ROUNDS=25 THREADS=1 scripts/paper_claims.sh
#
# Each arm × seed is `dvc exp run -n claims-<arm>-s<seed>` on the default training prompts with the
# default settings plus the arm's overrides, ROUNDS × g_batch trajectories (reward calls) for every arm.
# An experiment is kept (DVC stores its parameters, code, metrics and outputs) as soon as it finishes,
# so the matrix can run in parts: names already in `dvc exp list` are skipped. One arm × seed by hand:
#   dvc exp run -n claims-rl-s0 -S conf/base/parameters_finetune.yml:finetune.rl.seed=0 \
#     -S conf/base/parameters_finetune.yml:finetune.rl.runtime.num_rounds=25 \
#     -S conf/base/parameters_finetune.yml:finetune.rl.kl.weight=0.0 \
#     -S conf/base/parameters_finetune.yml:finetune.rl.value.enabled=false
# Then `python scripts/paper_claims.py` collects whatever has finished into data/08_reporting/paper_claims.json
# and docs/results.md. Runs in the workspace: commit or stash your own changes first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# The thread count changes CPU float sums and so the runs (docs/experiments.md): pin it.
export OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1
ROUNDS="${ROUNDS:-25}"
SEEDS="${SEEDS:-0 1 2}"
ARMS=("$@")
[ ${#ARMS[@]} -gt 0 ] || ARMS=(sft rl rl_kl rl_kl_v)
FILE=conf/base/parameters_finetune.yml

arm_overrides() {
  case "$1" in
    sft) echo "finetune.method=sft" ;;                                  # reward-weighted SFT, Lee et al.
    rl) echo "finetune.rl.kl.weight=0.0 finetune.rl.value.enabled=false" ;;
    rl_kl) echo "finetune.rl.value.enabled=false" ;;
    rl_kl_v) echo "" ;;                                                 # the default objective
    *) echo "unknown arm '$1' (sft, rl, rl_kl, rl_kl_v)" >&2; return 1 ;;
  esac
}

for arm in "${ARMS[@]}"; do arm_overrides "$arm" > /dev/null; done
git checkout -- "$FILE"   # a killed earlier call may have left an experiment's values in it
if ! git diff --quiet -- conf src; then
  echo "conf/ or src/ has uncommitted changes; an experiment records the commit it ran on: commit first." >&2
  exit 1
fi

done_names=$(dvc exp list --all-commits --name-only 2>/dev/null || true)
for seed in $SEEDS; do
  for arm in "${ARMS[@]}"; do
    name="claims-${arm}-s${seed}"
    if grep -qx "$name" <<< "$done_names"; then echo "$name: done, skipped"; continue; fi
    args=(-S "$FILE:finetune.rl.seed=$seed" -S "$FILE:finetune.rl.runtime.num_rounds=$ROUNDS")
    for kv in $(arm_overrides "$arm"); do args+=(-S "$FILE:$kv"); done
    git checkout -- "$FILE"   # each experiment starts from the committed defaults
    echo "== $name ($(date -u +%H:%M:%S)): ${args[*]}"
    start=$SECONDS
    dvc exp run -n "$name" "${args[@]}"
    echo "== $name finished in $((SECONDS - start)) s"
  done
done
git checkout -- "$FILE"

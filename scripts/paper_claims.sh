#!/usr/bin/env bash
# The paper's comparisons on the shapes world (docs/results.md), one DVC experiment per arm and seed.
#
#   scripts/paper_claims.sh [ARM ...]      arms: sft rl rl_kl rl_kl_v (default), paper, rl_kl_b<β> (e.g. rl_kl_b0.1)
#   SEEDS="0 1 2" ROUNDS=25 THREADS=1 scripts/paper_claims.sh
#   PROTOCOL=single CATEGORIES="color count composition location" scripts/paper_claims.sh
#
# Two protocols, as in the paper. PROTOCOL=multi (the default) runs each arm × seed as
# `dvc exp run -n claims-<arm>-s<seed>` on the default training prompts (claim 3). PROTOCOL=single runs
# each arm × category × seed as `claims-<arm>-<category>-s<seed>` on one prompt per category (claims 1–2):
# data/01_raw/prompts/claims_<category>.csv, written by `python scripts/paper_claims.py --write-single-prompts`
# (the prompt outside ShapesEval's test split whose base solve rate is closest to 0.35) and committed before
# the first run, with the paper's single-prompt settings of conf/shapes_single (read from that file). Every run
# has the default settings (and the protocol's) plus the arm's overrides (scripts/claims_arms.yml, the one
# table that scripts/paper_claims.py also checks the collected experiments against) and ROUNDS × g_batch
# trajectories (reward calls). An experiment is kept (DVC stores its parameters, code, metrics and outputs)
# as soon as it finishes, so the matrix can run in parts: names already in `dvc exp list`, or archived by
# `python scripts/paper_claims.py` in data/08_reporting/paper_claims_runs/ (committed), are skipped.
# One arm × seed by hand:
#   dvc exp run -n claims-rl-s0 -S conf/base/parameters_finetune.yml:finetune.rl.seed=0 \
#     -S conf/base/parameters_finetune.yml:finetune.rl.runtime.num_rounds=25 \
#     -S conf/base/parameters_finetune.yml:finetune.rl.kl.weight=0.0 \
#     -S conf/base/parameters_finetune.yml:finetune.rl.value.enabled=false
# and a single-prompt one adds -S conf/base/parameters_prompts.yml:prompts.path=data/01_raw/prompts/claims_count.csv
# (named claims-rl-count-s0). Then `python scripts/paper_claims.py` collects whatever has finished into
# data/08_reporting/paper_claims.json and docs/results.md. Runs in the workspace: commit or stash your own
# changes first. Bad input (an unknown arm, PROTOCOL or category, an empty or non-numeric SEEDS) stops the
# script before it changes anything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# The thread count changes CPU float sums and so the runs (docs/experiments.md): pin it.
export OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1
ROUNDS="${ROUNDS:-25}"
SEEDS="${SEEDS-0 1 2}"   # unset: 0 1 2; set but empty (SEEDS="") is an error below, not a silent no-op
PROTOCOL="${PROTOCOL:-multi}"
CATEGORIES="${CATEGORIES-color count composition location}"
ARMS=("$@")
[ ${#ARMS[@]} -gt 0 ] || ARMS=(sft rl rl_kl rl_kl_v)
TIMING=data/08_reporting/paper_claims_timing.csv
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1 | tr -d '"')
FILE=conf/base/parameters_finetune.yml
PROMPTS_FILE=conf/base/parameters_prompts.yml
SAMPLES_FILE=conf/base/parameters_pretrained_samples.yml

fail() { echo "paper_claims.sh: $*" >&2; exit 1; }

# Every input is checked before anything is touched.
case "$PROTOCOL" in
  single|multi) ;;
  *) fail "unknown PROTOCOL '$PROTOCOL' (single, multi)" ;;
esac
read -ra SEED_LIST <<< "$SEEDS"
[ ${#SEED_LIST[@]} -gt 0 ] || fail "SEEDS is empty: give at least one seed, e.g. SEEDS=\"0 1 2\""
for seed in "${SEED_LIST[@]}"; do
  [[ $seed =~ ^[0-9]+$ ]] || fail "seed '$seed' in SEEDS is not a non-negative integer"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || fail "ROUNDS '$ROUNDS' is not a positive integer"
declare -A OVERRIDES PROMPT_FILE
for arm in "${ARMS[@]}"; do   # scripts/claims_arms.yml through the collector: one table for both
  OVERRIDES[$arm]=$(python scripts/paper_claims.py --arm-overrides "$arm" --protocol "$PROTOCOL") || exit 1
  for kv in ${OVERRIDES[$arm]}; do   # the evaluation's settings go to their own file, the rest to finetune's
    [[ $kv == finetune.* || $kv == pretrained_samples.* ]] || fail "no parameter file for the override '$kv'"
  done
done
UNITS=("")   # multi-prompt: one run per arm and seed
if [ "$PROTOCOL" = single ]; then
  read -ra UNITS <<< "$CATEGORIES"
  [ ${#UNITS[@]} -gt 0 ] || fail "CATEGORIES is empty: give at least one of color count composition location"
  for category in "${UNITS[@]}"; do
    PROMPT_FILE[$category]=$(python scripts/paper_claims.py --single-prompt-path "$category") || exit 1
  done
  # Writes the files that are missing; refuses (and stops here) if one exists with another prompt.
  python scripts/paper_claims.py --write-single-prompts
fi

git checkout -- "$FILE" "$PROMPTS_FILE" "$SAMPLES_FILE"   # a killed earlier call may have left an experiment's values in them
if ! git diff --quiet -- conf src scripts/claims_arms.yml data/01_raw/prompts; then
  echo "conf/, src/, scripts/claims_arms.yml or data/01_raw/prompts/ has uncommitted changes; an experiment" \
       "records the commit it ran on: commit first." >&2
  exit 1
fi
# The prompt folder is a dependency of the DVC stages: a file git does not know would be in the run but
# not in the commit the experiment records (e.g. claims_<category>.csv just written).
untracked=$(git ls-files --others --exclude-standard -- data/01_raw/prompts scripts/claims_arms.yml)
[ -z "$untracked" ] || fail "commit these first (an experiment records the commit it ran on): $untracked"

done_names=$(dvc exp list --all-commits --name-only 2>/dev/null || true)
for seed in "${SEED_LIST[@]}"; do
  for category in "${UNITS[@]}"; do
    for arm in "${ARMS[@]}"; do
      name="claims-${arm}${category:+-$category}-s${seed}"
      # Done: an experiment of this clone, or a run archived by scripts/paper_claims.py (an earlier session's).
      if grep -qx "$name" <<< "$done_names" || [ -f "data/08_reporting/paper_claims_runs/$name/run.json" ]; then
        echo "$name: done, skipped"; continue
      fi
      args=(-S "$FILE:finetune.rl.seed=$seed" -S "$FILE:finetune.rl.runtime.num_rounds=$ROUNDS")
      for kv in ${OVERRIDES[$arm]}; do   # each setting to its parameter file (checked above)
        case $kv in pretrained_samples.*) args+=(-S "$SAMPLES_FILE:$kv") ;; *) args+=(-S "$FILE:$kv") ;; esac
      done
      [ -z "$category" ] || args+=(-S "$PROMPTS_FILE:prompts.path=${PROMPT_FILE[$category]}")
      git checkout -- "$FILE" "$PROMPTS_FILE" "$SAMPLES_FILE"   # each experiment starts from the committed defaults
      echo "== $name ($(date -u +%H:%M:%S)): ${args[*]}"
      start=$SECONDS
      # Up to `evaluate`: the claims read its metrics; ShapesEval (the next stage) is not needed for them.
      dvc exp run -n "$name" "${args[@]}" evaluate
      echo "== $name finished in $((SECONDS - start)) s"
      # What the matrix costs (docs/results.md states the total): one line per finished experiment.
      [ -f "$TIMING" ] || echo "name,seconds,threads,cpu,finished" > "$TIMING"
      echo "$name,$((SECONDS - start)),${THREADS:-1},\"$CPU\",$(date -u +%FT%TZ)" >> "$TIMING"
    done
  done
done
git checkout -- "$FILE" "$PROMPTS_FILE" "$SAMPLES_FILE"

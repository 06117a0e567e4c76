#!/usr/bin/env bash
# Screening of the update options on the headroom prompts (issue: multi-prompt DPOK that learns).
# Two runs side by side, one torch thread each, 6 minutes of training each, then evaluation.
set -euo pipefail
cd "$(dirname "$0")/../.."
E=".venv/bin/python scripts/experiment.py"
OUT=docs/experiments/screen
SUCC="--set kl.weight=0.01 --set policy.train_step_window=[0,0.9] --set value.enabled=false"
NEW="--set kl.weight=0.01 --set policy.train_step_window=[0,0.9] --set advantage.normalisation=group --set rollout.share_initial_noise=true --set policy.step_weighting=equalise --set value.features=tweedie_reward"
$E successor --minutes 6 $SUCC --out $OUT > $OUT.successor.log 2>&1 &
$E candidate --minutes 6 $NEW --out $OUT > $OUT.candidate.log 2>&1 &
wait

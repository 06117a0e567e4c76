#!/usr/bin/env bash
# Pilot runs for choosing the default (22 minutes of training each, two side by side, one thread each).
set -euo pipefail
cd "$(dirname "$0")/../.."
E=".venv/bin/python scripts/experiment.py"
OUT=docs/experiments/pilot
mkdir -p $OUT
NEW="--set kl.weight=0.01 --set policy.train_step_window=[0,0.9] --set advantage.normalisation=group --set rollout.share_initial_noise=true --set policy.step_weighting=equalise --set value.features=tweedie_reward"
$E candidate --minutes 22 $NEW --out $OUT > $OUT/candidate.log 2>&1 &
$E candidate_nocfg --minutes 22 $NEW --set sampler.guidance_scale=1.0 --out $OUT > $OUT/candidate_nocfg.log 2>&1 &
wait

"""The `shapes_single` environment: the paper's single-prompt setting on the shapes world. Its outputs
must never land on the default run's (DVC-tracked) paths, its parameters differ from base only where
it says, and it runs end to end from a copy of the project (tests/test_conf.py checks its output folders)."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from dpok.config import flatten
from dpok.prompts import PromptsConfig, load_prompt_table
from helpers import OFFLINE_ENV, ROOT, copy_project, load_config

ENV_NAME = "shapes_single"


@pytest.fixture(scope="module")
def configs():
    return load_config(ROOT, "local")["parameters"], load_config(ROOT, ENV_NAME)["parameters"]


# The single-prompt update measured for this environment (docs/experiments.md), where it differs from the multi-prompt
# default of conf/base.
SINGLE_PROMPT_UPDATE = {
    "rollout.g_batch": 16, "rollout.trajectories_per_prompt": 4, "rollout.share_initial_noise": False, "kl.weight": 0.1, "policy.step_weighting": "none",
    "value.features": "latent", "value.shrinkage": False, "advantage.normalisation": "per_prompt",
    "runtime.kl_report_trajectories": 4, "policy.p_step": 2,
}


def test_parameters_differ_from_base_only_in_the_declared_update_checkpoints_and_prompt_file(configs):
    base, single = configs
    assert single["finetune"]["checkpoint_dir"] == "data/06_models/shapes_single/checkpoints"
    base_rl, single_rl = flatten(base["finetune"]["rl"]), flatten(single["finetune"]["rl"])
    assert set(single_rl) == set(base_rl)
    differing = {k: v for k, v in single_rl.items() if base_rl[k] != v}
    assert differing == SINGLE_PROMPT_UPDATE
    assert single["finetune"]["probe"] == {**base["finetune"]["probe"], "every_rounds": 0}
    for params in (base, single):
        del params["finetune"]["checkpoint_dir"], params["finetune"]["rl"], params["finetune"]["probe"]
    assert single["finetune"] == base["finetune"] and single["sampler"] == base["sampler"]
    assert {k: v for k, v in single["prompts"].items() if k != "path"} == {
        k: v for k, v in base["prompts"].items() if k != "path"
    }
    # the evaluation: one prompt gets 64 images (base and fine-tuned from the same noise), the rest as base
    assert single["pretrained_samples"] == {**base["pretrained_samples"], "images_per_prompt": 64}
    table, _ = load_prompt_table(PromptsConfig.from_dict(single["prompts"]), root=ROOT)
    assert table["prompt"].tolist() == ["a blue square at the bottom"]
    assert table["split"].tolist() == ["train"] and table["category"].tolist() == ["location"]


def test_two_rounds_run_end_to_end_from_a_copy_of_the_project(tmp_path):
    project = copy_project(tmp_path, data=("data/01_raw", "data/06_models/shapes_base"))
    result = subprocess.run(
        ["kedro", "run", "--env", ENV_NAME, "--params", "finetune.rl.runtime.num_rounds=2"],
        cwd=project, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((project / "data/08_reporting/shapes_single/metrics.json").read_text())
    assert metrics["n_prompts"] == 1 and metrics["n_images"] == 64  # one prompt: 64 evaluation images
    history = pd.read_csv(project / "data/08_reporting/shapes_single/finetune_history.csv")
    assert history["round"].tolist() == [1, 2]
    # the summary at the end of the run: rewards, KL bound, where the outputs are
    log = result.stdout + result.stderr
    assert "DPOK finished 2 round(s). Training reward" in log and "KL bound to the base model" in log
    assert "data/06_models/shapes_single/lora" in log and "data/08_reporting/shapes_single/report.md" in log
    assert "Before/after on fixed seeds" not in log  # this run evaluated already
    assert (project / "data/06_models/shapes_single/lora/pytorch_lora_weights.safetensors").is_file()
    # nothing was written where the default run (and DVC) keeps its outputs
    for default_output in ("data/08_reporting/metrics.json", "data/06_models/lora", "data/02_intermediate/prompts.parquet"):
        assert not (project / default_output).exists(), default_output

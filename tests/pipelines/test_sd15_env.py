"""The `sd15` environment: the paper's values, values only, and the finetune pipeline run end to end in
that code path on a tiny random-weight SD-architecture model with the aesthetic reward."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from dpok.config import with_overrides
from dpok.rl import FinetuneConfig
from helpers import load_config, local_entry, shapeseval_table

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PAPER_WORDS = tuple("a green colored rabbit cat and dog four wolves in the park on moon".split())


@pytest.fixture(scope="module")
def sd15(project_root):
    loader = load_config(project_root, "sd15")
    return {"parameters": loader["parameters"], "catalog": loader["catalog"]}


def test_sd15_holds_the_papers_single_prompt_setting(sd15):
    params = sd15["parameters"]
    rl = FinetuneConfig.from_params(params["finetune"]["rl"], params["sampler"])
    assert (rl.sampler.eta, rl.sampler.num_inference_steps, rl.sampler.guidance_scale) == (1.0, 50, 7.5)
    assert (rl.lora.rank, rl.lora.alpha, rl.lora.target_modules) == (4, 4.0, ("to_q", "to_k", "to_v", "to_out.0"))
    assert (rl.policy.learning_rate, rl.policy.max_grad_norm, rl.advantage.reward_weight, rl.kl.weight) == (
        1e-5, 0.1, 10.0, 0.01)
    assert (rl.policy.buffer_size, rl.rollout.g_batch, rl.policy.p_batch, rl.policy.accum, rl.policy.p_step) == (
        1000, 10, 4, 12, 5)
    assert rl.runtime.num_rounds * rl.policy.p_step == 10_000  # the paper's total policy steps
    assert rl.runtime.precision in ("fp16", "bf16") and rl.runtime.gradient_checkpointing is False
    assert params["finetune"]["reward"] == {"shapes_judge": 0.0, "imagereward": 1.0}  # 0: base's reward off
    assert params["prompts"]["path"] == "data/01_raw/prompts/paper_single.txt"
    base_model = sd15["catalog"]["base_model"]
    assert base_model["path"] == SD15_HUB_ID and base_model["torch_dtype"] == "float16"


def test_sd15_changes_values_not_code_paths(project_root, sd15):
    base = load_config(project_root, "local")
    base_params, base_catalog = base["parameters"], base["catalog"]
    ours = sd15["parameters"]["finetune"]
    assert set(ours) == set(base_params["finetune"])
    assert set(ours["rl"]) == set(base_params["finetune"]["rl"])
    assert set(sd15["parameters"]["sampler"]) == set(base_params["sampler"])
    assert set(sd15["parameters"]["prompts"]) == set(base_params["prompts"])
    overridden = yaml.safe_load((project_root / "conf/sd15/catalog.yml").read_text())
    for name in overridden:
        assert sd15["catalog"][name]["type"] == base_catalog[name]["type"], name
    assert set(sd15["catalog"]) == set(base_catalog)


def test_the_model_path_and_dtype_are_chosen_at_run_time(project_root):
    catalog = load_config(
        project_root, "sd15",
        {"base_model_path": "data/06_models/stable-diffusion-v1-5", "base_model_dtype": "bfloat16"},
    )["catalog"]
    assert catalog["base_model"] == {
        "type": "dpok.datasets.DiffusersPipelineDataset",
        "path": "data/06_models/stable-diffusion-v1-5",
        "torch_dtype": "bfloat16",
    }


def test_missing_reward_files_stop_the_run_at_validation_naming_the_file(sd15):
    from dpok.pipelines.finetune.nodes import validate_finetune_params

    prompts = pd.DataFrame({"prompt": ["A green colored rabbit."], "split": ["train"]})
    message = r"imagereward: `checkpoint` file '.*ImageReward\.pt' does not exist.*docs/sd15\.md"
    with pytest.raises(FileNotFoundError, match=message):
        validate_finetune_params(sd15["parameters"]["finetune"], sd15["parameters"]["sampler"], prompts, shapeseval_table())


def test_finetune_runs_in_the_sd15_code_path_on_a_tiny_model(project_root, sd15, tmp_path):
    from kedro.io import DataCatalog
    from kedro.runner import SequentialRunner

    from dpok.datasets import DiffusersPipelineDataset
    from dpok.models import build_tiny_pipeline
    from dpok.models.aesthetic import write_tiny_aesthetic
    from dpok.pipelines.finetune import create_pipeline

    # The sd15 model entry, pointed at a tiny random-weight pipeline of SD's architecture.
    model_entry = dict(sd15["catalog"]["base_model"], path=str(tmp_path / "tiny_sd"))
    DiffusersPipelineDataset(model_entry["path"]).save(build_tiny_pipeline(seed=0, words=PAPER_WORDS))
    # The sd15 parameters with the reward swapped for a tiny aesthetic model and the sizes shrunk.
    params = yaml.safe_load(yaml.safe_dump(sd15["parameters"]))  # a deep copy
    finetune = params["finetune"]
    finetune["reward"] = {"aesthetic": 1.0}
    finetune["reward_kwargs"] = {"aesthetic": {**write_tiny_aesthetic(tmp_path / "aesthetic"), "device": "cpu"}}
    finetune["checkpoint_dir"] = str(tmp_path / "checkpoints")
    finetune["device"] = "cpu"
    finetune["rl"] = with_overrides(finetune["rl"], {
        "runtime.num_rounds": 1, "rollout.g_batch": 2, "policy.buffer_size": 8, "policy.p_batch": 2,
        "policy.accum": 1, "policy.p_step": 4, "value.batch_size": 4, "value.steps": 1,
        "runtime.kl_report_trajectories": 1, "runtime.checkpoint_every": 1,
    }, "finetune.rl")
    sampler = {**params["sampler"], "num_inference_steps": 2}
    prompts = dict(params["prompts"], path=str(project_root / params["prompts"]["path"]))

    outputs = {name: local_entry(sd15["catalog"][name], tmp_path) for name in ("lora", "finetune_history", "finetune_curves")}
    catalog = DataCatalog.from_config({"base_model": model_entry, **outputs})
    catalog["params:finetune"] = finetune
    catalog["params:sampler"] = sampler
    catalog["params:prompts"] = prompts
    catalog["shapeseval_prompts"] = shapeseval_table()  # read, not used: sd15 has no probe
    SequentialRunner().run(create_pipeline(), catalog)

    history = catalog.load("finetune_history")
    # fp16 loss scaling starts at 2**16 and halves on each overflow: the first steps may be skipped
    assert list(history["round"]) == [1] and history["skipped_steps"].iloc[0] < 4
    assert history[["reward_mean", "policy_loss", "kl_bound_nats"]].notna().all().all()
    lora = catalog.load("lora")
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((tmp_path / "checkpoints").glob("run-*/round_000001"))) == 1
    assert (tmp_path / "data/08_reporting/sd15/finetune_curves.png").is_file()
    from safetensors.torch import load_file

    weights = load_file(lora / "pytorch_lora_weights.safetensors")
    assert weights and all(".attn" in k and v.dtype == torch.float32 for k, v in weights.items())
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)  # a policy step was taken

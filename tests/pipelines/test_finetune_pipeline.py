"""The finetune pipeline: parameter checks before any model loads, and a 2-round run on the shipped model."""

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from dpok.config import project_parameters, with_overrides
from dpok.models import ModelSourceError, load_lora, load_pipeline
from dpok.pipelines.finetune import create_pipeline
from dpok.pipelines.finetune.nodes import FinetuneRunConfig, validate_finetune_params
from dpok.rewards import UnknownRewardError
from dpok.rl import FinetuneConfig, SFTConfig
from helpers import shapeseval_table

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data/06_models/shapes_base"


def base_params() -> dict:
    return project_parameters()["finetune"]


# The shared sampler of these runs: 4 steps (the tiny settings' training and the LoRA check below).
TINY_SAMPLER = {**project_parameters()["sampler"], "num_inference_steps": 4}


def tiny_settings(params: dict, tmp_path: Path) -> dict:
    params = copy.deepcopy(params)
    params["checkpoint_dir"] = str(tmp_path / "checkpoints")
    params["rl"] = with_overrides(params["rl"], {
        "runtime.num_rounds": 2, "rollout.g_batch": 4, "rollout.trajectories_per_prompt": 4, "policy.p_batch": 4, "policy.accum": 1, "policy.p_step": 1,
        "value.batch_size": 8, "value.steps": 1, "policy.buffer_size": 64, "runtime.kl_report_trajectories": 1,
        "runtime.checkpoint_every": 1,
    }, "finetune.rl")
    return params


PROMPTS = pd.DataFrame({"prompt": ["a green circle", "a red circle"], "category": "color", "split": ["train", "heldout"]})


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda p: p["rl"]["policy"].update(learning_rate=0.0), ValueError, "finetune.rl.policy.learning_rate must be"),
        (lambda p: p["rl"]["kl"].update(weight=-0.1), ValueError, "finetune.rl.kl.weight"),
        (lambda p: p["rl"]["policy"].update(p_batch=2000), ValueError, "p_batch"),
        (lambda p: p["rl"]["kl"].update(form="l2"), ValueError, "kl.form"),
        (lambda p: p["rl"].update(num_rounds=3), ValueError, r"unknown key\(s\) finetune\.rl\.num_rounds"),
        (lambda p: p["rl"]["runtime"].pop("num_rounds"), ValueError, r"missing key\(s\) finetune\.rl\.runtime\.num_rounds"),
        (lambda p: p.update(reward={"image_reward_typo": 1.0}), UnknownRewardError, "image_reward_typo"),
        (lambda p: p.update(train_split="dev"), ValueError, "no prompt has split 'dev'"),
        (lambda p: p.update(device="tpu"), ValueError, "finetune.device"),
        (lambda p: p.update(lr=1), ValueError, "unknown key"),
        (lambda p: p.update(method="ppo"), ValueError, "finetune.method must be one of"),
        (lambda p: p["sft"].update(steps=0), ValueError, "finetune.sft.steps"),
    ],
)
def test_bad_parameters_fail_before_any_model_loads(change, error, message):
    params = base_params()
    change(params)

    def model_must_not_load():
        raise AssertionError("the model was loaded before the parameters were checked")

    catalog = DataCatalog()
    catalog["params:finetune"] = MemoryDataset(params)
    catalog["params:sampler"] = MemoryDataset(project_parameters()["sampler"])
    catalog["params:prompts"] = MemoryDataset({**project_parameters()["prompts"], "path": str(ROOT / "data/01_raw/prompts/shapes_eval.csv")})
    catalog["base_model"] = _LazyFail(model_must_not_load)
    catalog["shapeseval_prompts"] = MemoryDataset(shapeseval_table())
    with pytest.raises(error, match=message):
        SequentialRunner().run(create_pipeline(), catalog)


class _LazyFail(MemoryDataset):
    def __init__(self, on_load):
        super().__init__()
        self._on_load = on_load

    def load(self):
        return self._on_load()


def test_missing_model_path_is_a_clear_error(tmp_path):
    from kedro.io import DatasetError

    from dpok.datasets import DiffusersPipelineDataset

    with pytest.raises(ModelSourceError, match="data/06_models/nope' does not exist"):
        load_pipeline("data/06_models/nope", root=tmp_path)
    with pytest.raises(DatasetError, match="data/06_models/nope' does not exist.*fix the path"):
        DiffusersPipelineDataset(path="data/06_models/nope").load()
    with pytest.raises(ModelSourceError, match="not in the hub cache, and HF_HUB_OFFLINE=1"):
        load_pipeline("someone/no-such-model")


def test_the_finetune_block_is_parsed_once_into_one_typed_object():
    config, train, probe_prompts = validate_finetune_params(base_params(), TINY_SAMPLER, PROMPTS, shapeseval_table())
    assert train["prompt"].tolist() == ["a green circle"] and train["category"].tolist() == ["color"]
    assert isinstance(config, FinetuneRunConfig) and isinstance(config.rl, FinetuneConfig)
    assert isinstance(config.sft, SFTConfig) and config.reward == {"shapes_judge": 1.0}
    assert config.rl.sampler.num_inference_steps == 4  # the shared sampler, typed inside the RL settings
    assert config.to_dict()["rl"] == {**base_params()["rl"], "sampler": TINY_SAMPLER}


def _pool_prompts(tmp_path: Path) -> str:
    """A prompt file of ShapesEval training-pool prompts (the probe refuses to train on its test prompts)."""
    pool = shapeseval_table().query("split != 'test'").groupby("category").head(2)
    pool = pool.assign(split=pool["split"].replace({"validation": "heldout"}))[["prompt", "category", "split"]]
    pool.to_csv(tmp_path / "pool.csv", index=False)
    return str(tmp_path / "pool.csv")


def test_a_training_prompt_that_is_a_shapeseval_test_prompt_is_refused_while_the_probe_runs():
    leaking = pd.DataFrame({"prompt": ["a green circle", "a green triangle"], "category": "color", "split": "train"})
    with pytest.raises(ValueError, match=r"1 training prompt\(s\) are ShapesEval test prompts \('a green triangle'\)"):
        validate_finetune_params(base_params(), TINY_SAMPLER, leaking, shapeseval_table())
    params = base_params()
    params["probe"]["every_rounds"] = 0  # no probe, no test set to protect: the prompts are the user's choice
    config, train, probe_prompts = validate_finetune_params(params, TINY_SAMPLER, leaking, shapeseval_table())
    assert len(train) == 2 and probe_prompts.empty
    broken = shapeseval_table().assign(category="color")  # a benchmark file that is not ShapesEval's split
    with pytest.raises(Exception, match="ShapesEval split"):
        validate_finetune_params(base_params(), TINY_SAMPLER, PROMPTS, broken)


@pytest.mark.parametrize("key, value, message", [
    ("every_rounds", -1, "finetune.probe.every_rounds"), ("images_per_prompt", 0, "finetune.probe.images_per_prompt"),
    ("score", "no_such_reward", "no_such_reward"), ("batch_size", 0, "finetune.probe.batch_size"),
])
def test_bad_probe_settings_are_named(key, value, message):
    params = base_params()
    params["probe"][key] = value
    with pytest.raises((ValueError, KeyError), match=message):
        validate_finetune_params(params, TINY_SAMPLER, PROMPTS, shapeseval_table())


def _run_finetune_pipeline(params: dict, tmp_path: Path) -> DataCatalog:
    catalog = DataCatalog()
    catalog["params:finetune"] = MemoryDataset(params)
    catalog["params:sampler"] = MemoryDataset(TINY_SAMPLER)
    catalog["params:prompts"] = MemoryDataset({**project_parameters()["prompts"], "path": _pool_prompts(tmp_path)})
    from dpok.datasets import DiffusersPipelineDataset, LoraWeightsDataset

    catalog["base_model"] = DiffusersPipelineDataset(path=str(SHIPPED))
    from kedro_datasets.pandas import CSVDataset
    from kedro_datasets.pillow import ImageDataset

    catalog["lora"] = LoraWeightsDataset(path=str(tmp_path / "lora"))
    catalog["finetune_history"] = CSVDataset(filepath=str(tmp_path / "history.csv"))
    catalog["finetune_curves"] = ImageDataset(filepath=str(tmp_path / "curves.png"))
    catalog["finetune_rewards"] = CSVDataset(filepath=str(tmp_path / "rewards.csv"))
    catalog["finetune_value_by_step"] = CSVDataset(filepath=str(tmp_path / "value_by_step.csv"))
    catalog["finetune_reward_curves"] = ImageDataset(filepath=str(tmp_path / "reward_curves.png"))
    catalog["shapeseval_prompts"] = MemoryDataset(shapeseval_table())
    catalog["finetune_probe"] = CSVDataset(filepath=str(tmp_path / "probe.csv"))
    catalog["finetune_probe_curve"] = ImageDataset(filepath=str(tmp_path / "probe_curve.png"))
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def _assert_the_lora_changes_stock_diffusers_samples(lora) -> None:
    def sample(pipe):
        return pipe(
            ["a green triangle"] * 2, num_inference_steps=4, guidance_scale=3.0, eta=1.0, output_type="np",
            generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        ).images

    base = load_pipeline(str(SHIPPED))
    before = sample(base)
    load_lora(base, lora)
    after = sample(base)
    assert np.abs(after - before).max() > 1e-4, "the saved LoRA did not change the images"


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped base model is not in this checkout")
def test_two_rounds_on_the_shipped_model_write_a_lora_stock_diffusers_loads(tmp_path):
    params = tiny_settings(base_params(), tmp_path)
    params["probe"].update(every_rounds=1, images_per_prompt=1)
    catalog = _run_finetune_pipeline(params, tmp_path)

    history = catalog.load("finetune_history")
    assert history["round"].tolist() == [1, 2]
    probes = catalog.load("finetune_probe")  # before training and after each round, on every test prompt
    assert probes["round"].tolist() == [0, 1, 2] and probes["images"].tolist() == [76.0] * 3
    assert probes["reward_calls"].tolist() == [0, params["rl"]["rollout"]["g_batch"], 2 * params["rl"]["rollout"]["g_batch"]]
    categories = [f"accuracy_{c}" for c in ("color", "composition", "count", "location")]
    assert np.allclose(probes[categories].mean(axis=1), probes["accuracy"])  # GenEval's overall: the category mean
    assert catalog.load("finetune_probe_curve").size[0] > 100
    assert np.isfinite(history["reward_mean"]).all() and np.isfinite(history["kl_bound_nats"]).all()
    assert catalog.load("finetune_curves").size[0] > 100
    rewards = catalog.load("finetune_rewards")  # one row per sampled trajectory, with its prompt's category
    rl = FinetuneConfig.from_params(params["rl"], TINY_SAMPLER)
    g_batch = rl.rollout.g_batch
    assert len(rewards) == 2 * g_batch and rewards["round"].value_counts().to_dict() == {1: g_batch, 2: g_batch}
    train = pd.read_csv(tmp_path / "pool.csv").query("split == 'train'")
    assert set(rewards["prompt"]) <= set(train["prompt"])
    assert (rewards["category"] == rewards["prompt"].map(dict(zip(train["prompt"], train["category"])))).all()
    assert catalog.load("finetune_reward_curves").size[0] > 100
    by_step = catalog.load("finetune_value_by_step")  # the final buffer's steps, each a finite ratio
    first, stop = rl.train_steps()
    assert set(by_step["step"]) <= set(range(first, stop)) and len(by_step) > 0
    assert np.isfinite(by_step["value_variance_ratio"]).all() and (by_step["value_variance_ratio"] >= 0).all()
    assert len(list((tmp_path / "checkpoints").iterdir())) >= 1
    _assert_the_lora_changes_stock_diffusers_samples(catalog.load("lora"))
    shutil.rmtree(tmp_path / "checkpoints")


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped base model is not in this checkout")
def test_method_sft_writes_the_same_outputs_from_the_base_models_samples(tmp_path):
    params = tiny_settings(base_params(), tmp_path)
    params["method"] = "sft"
    params["sft"].update(steps=4, batch_size=4, report_every=2)
    catalog = _run_finetune_pipeline(params, tmp_path)

    history = catalog.load("finetune_history")  # a row per SFT step
    assert history["round"].tolist() == [1, 2, 3, 4] and "weighted_mse" in history.columns
    assert np.isfinite(history["kl_bound_nats"].iloc[[1, 3]]).all()
    assert catalog.load("finetune_curves").size[0] > 100
    rewards = catalog.load("finetune_rewards")  # the base model's scored samples SFT learned from
    assert len(rewards) == 2 * params["rl"]["rollout"]["g_batch"]
    assert not (tmp_path / "checkpoints").exists()
    assert catalog.load("finetune_value_by_step").empty  # no value function in SFT
    _assert_the_lora_changes_stock_diffusers_samples(catalog.load("lora"))


def test_run_fingerprint_separates_results_not_lengths():
    from dpok.pipelines.finetune.nodes import run_fingerprint

    params = base_params()
    config = FinetuneRunConfig.from_params(params, TINY_SAMPLER)
    same = run_fingerprint(config, ["a green triangle"], "m")
    longer = copy.deepcopy(params)
    longer["rl"]["runtime"]["num_rounds"] += 10  # the runtime group may change: same run, resumed
    assert run_fingerprint(FinetuneRunConfig.from_params(longer, TINY_SAMPLER), ["a green triangle"], "m") == same
    faster = copy.deepcopy(params)
    faster["rl"]["policy"]["learning_rate"] *= 2
    assert run_fingerprint(FinetuneRunConfig.from_params(faster, TINY_SAMPLER), ["a green triangle"], "m") != same
    other_sampler = {**TINY_SAMPLER, "guidance_scale": 5.0}
    assert run_fingerprint(FinetuneRunConfig.from_params(params, other_sampler), ["a green triangle"], "m") != same
    assert run_fingerprint(config, ["a red circle"], "m") != same
    assert run_fingerprint(config, ["a green triangle"], "other model") != same
    from dpok.provenance import source_digests

    code = source_digests()
    assert run_fingerprint(config, ["a green triangle"], "m", code) == same
    assert run_fingerprint(config, ["a green triangle"], "m", {**code, "rl/trainer.py": "edited"}) != same


def test_a_code_change_trains_afresh_instead_of_resuming_and_says_why(tmp_path, monkeypatch, caplog):
    """Issue: `dvc repro` after a change to src/dpok/rl "resumed" the finished run of the old code."""
    from dpok.pipelines.finetune import nodes
    from dpok.provenance import source_digests

    params = tiny_settings(base_params(), tmp_path)
    params["rl"]["runtime"].update(num_rounds=1)
    params["probe"]["every_rounds"] = 0  # shapes_eval.csv trains on ShapesEval test prompts
    table = pd.read_csv(ROOT / "data/01_raw/prompts/shapes_eval.csv")
    config, train, probe_prompts = validate_finetune_params(params, TINY_SAMPLER, table, shapeseval_table())

    def run() -> pd.DataFrame:
        pipeline = load_pipeline(str(SHIPPED))
        _, history, *_ = nodes.finetune(pipeline, config, train, probe_prompts)
        return history

    first = run()
    assert first["round"].tolist() == [1]
    (folder,) = (tmp_path / "checkpoints").iterdir()
    assert (folder / "identity.json").is_file() and (folder / "round_000001").is_dir()
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run()  # same code: resumes the finished run, nothing retrained
    assert "Resuming DPOK" in caplog.text and "code changed" not in caplog.text
    pd.testing.assert_frame_equal(again, first)

    code = source_digests()
    code["rl/losses.py"] = "0" * 64  # as if the file had been edited
    monkeypatch.setattr(nodes, "source_digests", lambda: code)
    caplog.clear()
    with caplog.at_level("INFO"):
        changed = run()
    assert "Resuming DPOK" not in caplog.text
    assert f"The code changed since the run with these settings in {folder} (rl/losses.py)" in caplog.text
    assert changed["round"].tolist() == [1]
    assert len(list((tmp_path / "checkpoints").glob("run-*/round_000001"))) == 2


def test_source_digests_follow_every_byte_of_the_run_code(tmp_path):
    from dpok.provenance import source_digests

    (tmp_path / "rl").mkdir()
    (tmp_path / "rl/a.py").write_text("x = 1\n")
    (tmp_path / "devices.py").write_text("y = 2\n")
    before = source_digests(("rl", "devices.py"), root=tmp_path)
    assert set(before) == {"rl/a.py", "devices.py"}
    (tmp_path / "rl/a.py").write_text("x = 1 \n")
    assert source_digests(("rl", "devices.py"), root=tmp_path)["rl/a.py"] != before["rl/a.py"]
    with pytest.raises(FileNotFoundError):
        source_digests(("nothing",), root=tmp_path)


@pytest.mark.slow  # in-process: test_method_sft_writes_the_same_outputs_from_the_base_models_samples
@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped base model is not in this checkout")
def test_kedro_run_with_method_sft_from_the_command_line(tmp_path):
    """Through the CLI, so the project's hooks (the end-of-run summary) see an SFT history too."""
    import subprocess

    from helpers import BIN, OFFLINE_ENV, copy_project

    project = copy_project(tmp_path, data=("data/01_raw", "data/06_models/shapes_base"))
    params = ("finetune.method=sft,finetune.rl.runtime.num_rounds=1,finetune.rl.rollout.g_batch=4,"
              "finetune.rl.rollout.trajectories_per_prompt=4,"
              "sampler.num_inference_steps=4,finetune.rl.runtime.kl_report_trajectories=1,finetune.sft.steps=2,"
              "finetune.sft.batch_size=4")
    result = subprocess.run([str(BIN / "kedro"), "run", "--pipelines", "finetune", "--params", params], cwd=project,
                            env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SFT finished 2 step(s)" in result.stdout
    assert (project / "data/06_models/lora/pytorch_lora_weights.safetensors").is_file()

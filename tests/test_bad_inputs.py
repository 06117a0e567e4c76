"""The bad-input matrix: each bad input a user can give gets one clear error that names the file, key or
line and what to do, raised before any model loads, with nothing written.

The cases run through the functions `kedro run` calls first (the prompts node's reader, the finetune
node's parameter check, the model dataset, the checkpoint reader, the trainer's reward check).
`python tests/test_bad_inputs.py` prints every case with its message.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpok.config import project_parameters
from dpok.datasets import DiffusersPipelineDataset
from dpok.pipelines.finetune.nodes import validate_finetune_params
from dpok.prompts import PromptsConfig, load_prompt_table
from dpok.rl import FinetuneConfig, train_dpok
from dpok.rl.checkpoint import load_checkpoint
from helpers import base_parameters, finetune_config, shapeseval_table

TRAIN = pd.DataFrame({"prompt": ["a red circle"], "category": ["color"], "split": ["train"]})

# (case, file name, file bytes, prompts settings, words the message must contain)
PROMPT_FILES = [
    ("missing prompt file", None, None, {}, ["does not exist", "Fix: set prompts.path"]),
    ("empty prompt file", "p.txt", b"", {}, ["contains no prompts", "Fix:"]),
    ("CSV with only a header", "p.csv", b"prompt,split\n", {}, ["contains no prompts"]),
    ("prompt over the limit", "p.csv", b"prompt\n" + b"a" * 301 + b"\n", {}, ["prompt 1 has 301 characters",
                                                                             "prompts.max_chars=300"]),
    ("invalid UTF-8", "p.csv", b"prompt\n\xff\xfe circle\n", {}, ["not valid UTF-8 (byte", "re-save"]),
    ("malformed JSON", "p.json", b'["a red circle",', {}, ["is not valid JSON", "line 1"]),
    ("malformed JSONL", "p.jsonl", b'{"prompt": "a red circle"}\n{"prompt": \n', {}, ["line 2 is not valid JSON"]),
    ("duplicate with another split", "p.csv", b"prompt,split\na red circle,train\na  red circle ,heldout\n", {},
     ["'a red circle' appears 2 times", "different split values", "keep one copy"]),
    ("unknown split value", "p.csv", b"prompt,split\na red circle,test\n", {}, ["unknown split value(s) ['test']"]),
]


def _prompt_error(tmp_path: Path, name: str | None, data: bytes | None, settings: dict) -> str:
    path = tmp_path / (name or "missing.txt")
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ValueError) as error:
        load_prompt_table(PromptsConfig.from_dict({**base_parameters()["prompts"], "path": str(path), **settings}))
    return str(error.value)


@pytest.mark.parametrize("case, name, data, settings, words", PROMPT_FILES, ids=[c[0] for c in PROMPT_FILES])
def test_a_bad_prompt_file_names_the_file_and_the_fix(case, name, data, settings, words, tmp_path):
    message = _prompt_error(tmp_path, name, data, settings)
    assert str(tmp_path / (name or "missing.txt")) in message
    for word in words:
        assert word in message, (case, message)


def _finetune_params() -> dict:
    return copy.deepcopy(project_parameters()["finetune"])


# (case, change to the finetune parameters, error type, words the message must contain)
PARAMETERS = [
    ("out of range (--params finetune.rl.policy.learning_rate=0)",
     lambda p: p["rl"]["policy"].update(learning_rate=0),
     ValueError, ["finetune.rl.policy.learning_rate must be a number > 0, got 0"]),
    ("unknown key (finetune.rl.policy.lr)", lambda p: p["rl"]["policy"].update(lr=1e-3), ValueError,
     ["unknown key(s) finetune.rl.policy.lr", "expected some of"]),
    ("a setting of the flat layout of before (finetune.rl.learning_rate)",
     lambda p: p["rl"].update(learning_rate=1e-3), ValueError, ["unknown key(s) finetune.rl.learning_rate"]),
    ("missing key (finetune.rl.kl.weight)", lambda p: p["rl"]["kl"].pop("weight"), ValueError,
     ["missing key(s) finetune.rl.kl.weight", "conf/base"]),
    ("wrong type (YAML 2e-3 is text)", lambda p: p["rl"]["policy"].update(learning_rate="2e-3"), ValueError,
     ["finetune.rl.policy.learning_rate must be a number > 0, got '2e-3'", "write 1.0e-3"]),
    ("group size not dividing g_batch", lambda p: p["rl"]["rollout"].update(trajectories_per_prompt=3), ValueError,
     ["finetune.rl.rollout.trajectories_per_prompt must be a divisor of finetune.rl.rollout.g_batch (32)"]),
    ("unknown reward name", lambda p: p.update(reward={"image_reward": 1.0}), Exception,
     ["unknown reward 'image_reward'", "available rewards"]),
    ("options for a reward without a weight", lambda p: p.update(reward_kwargs={"aesthetic": {}}), ValueError,
     ["options given for ['aesthetic'], which have no weight"]),
    ("unknown device", lambda p: p.update(device="tpu"), ValueError, ["finetune.device must be 'auto'"]),
]


@pytest.mark.parametrize("case, change, error, words", PARAMETERS, ids=[c[0] for c in PARAMETERS])
def test_a_bad_parameter_names_its_full_key_before_anything_loads(case, change, error, words):
    params = _finetune_params()
    change(params)
    with pytest.raises(error) as raised:
        validate_finetune_params(params, project_parameters()["sampler"], TRAIN, shapeseval_table())
    for word in words:
        assert word in str(raised.value), (case, str(raised.value))


MODEL_PATHS = [
    ("model path that does not exist", "nope", ["'{path}' does not exist", "fix the path"]),
    ("model path that is not a diffusers folder", "not_a_pipeline", ["has no model_index.json",
                                                                     "diffusers pipeline folder"]),
]


@pytest.mark.parametrize("case, name, words", MODEL_PATHS, ids=[c[0] for c in MODEL_PATHS])
def test_a_bad_model_path_says_what_is_wrong(case, name, words, tmp_path):
    path = tmp_path / name
    if name == "not_a_pipeline":
        path.mkdir()
        (path / "config.json").write_text("{}")
    with pytest.raises(Exception) as raised:
        DiffusersPipelineDataset(path=str(path)).load()
    message = str(raised.value)
    for word in words:
        assert word.format(path=path) in message, (case, message)


def test_a_damaged_checkpoint_names_the_folder_and_what_to_do(tiny_pipeline, tmp_path):
    state = _train(tiny_pipeline, tmp_path, rounds=1)
    checkpoint = state.last_checkpoint
    lora = checkpoint / "lora.safetensors"
    lora.write_bytes(lora.read_bytes()[:100])  # truncated after it was written (a copy, a full disk)
    with pytest.raises(ValueError) as raised:
        load_checkpoint(checkpoint)
    assert f"checkpoint '{checkpoint}' is damaged" in str(raised.value)
    assert "Delete that folder" in str(raised.value) and "finetune.rl.runtime.resume=false" in str(raised.value)


def _config(rounds: int) -> FinetuneConfig:
    return finetune_config({"runtime.num_rounds": rounds, "rollout.g_batch": 4, "rollout.trajectories_per_prompt": 4, "sampler.num_inference_steps": 3, "policy.p_batch": 4, "policy.accum": 1, "policy.p_step": 1, "policy.buffer_size": 32, "value.batch_size": 8, "value.steps": 1, "runtime.kl_report_trajectories": 0, "runtime.checkpoint_every": 1, "value.features": "latent"})


def _train(pipeline, tmp_path: Path, rounds: int, reward=None):
    def brightness(images, prompts):
        return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255.0

    return train_dpok(copy.deepcopy(pipeline), ["a red circle", "a blue square"], reward or brightness,
                      _config(rounds), tmp_path / "checkpoints", progress=False)


@pytest.mark.parametrize("bad", ["nan", "wrong length"])
def test_a_reward_that_goes_bad_mid_run_stops_it_with_the_checkpoint_intact(bad, tiny_pipeline, tmp_path):
    first = _train(tiny_pipeline, tmp_path, rounds=1)
    saved = sorted((tmp_path / "checkpoints").iterdir())
    before = {f: f.read_bytes() for f in first.last_checkpoint.iterdir()}

    def broken(images, prompts):
        scores = np.full(len(images), 0.5)
        return np.append(scores, 0.5) if bad == "wrong length" else np.where(np.arange(len(images)) == 1, np.nan, scores)

    with pytest.raises(ValueError) as raised:
        _train(tiny_pipeline, tmp_path, rounds=2, reward=broken)
    assert "round 2" in str(raised.value)
    assert sorted((tmp_path / "checkpoints").iterdir()) == saved  # nothing new, nothing removed
    assert {f: f.read_bytes() for f in first.last_checkpoint.iterdir()} == before
    load_checkpoint(first.last_checkpoint)  # still resumable


if __name__ == "__main__":  # the matrix with its messages, for the docs and the issue notes
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for case, name, data, settings, _ in PROMPT_FILES:
            tmp = Path(folder) / case.replace(" ", "_")
            tmp.mkdir()
            print(f"| {case} | {_prompt_error(tmp, name, data, settings).replace(folder, '…')} |")
            shutil.rmtree(tmp)
    for case, change, _, _ in PARAMETERS:
        params = _finetune_params()
        change(params)
        try:
            validate_finetune_params(params, project_parameters()["sampler"], TRAIN, shapeseval_table())
        except Exception as error:  # noqa: BLE001 (printing what each case raises)
            print(f"| {case} | {error} |")

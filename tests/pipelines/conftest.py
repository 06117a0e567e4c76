"""Fixtures for the pipeline tests: the evaluation catalog on tmp paths, a tiny model, a LoRA."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from dpok.config import merged
from helpers import XSS_PROMPT, load_config, local_entry, split_sampling

# Tiny-model words only (dpok.models.build_tiny_pipeline), plus the escaping case.
EVAL_PROMPTS_CSV = f"""prompt,category,split
a red circle,color,train
a blue square,color,train
a dog on the left,location,train
a green cat,color,heldout
"{XSS_PROMPT}",location,heldout
"""

# `pretrained_samples` and `sampler` settings for the tiny model in one mapping (helpers.split_sampling
# puts the sampler's keys in `params:sampler`).
TINY_SAMPLING = {
    "images_per_prompt": 4,
    "seed": 0,
    "num_inference_steps": 3,
    "guidance_scale": 3.0,
    "eta": 1.0,
    "batch_size": 6,
    "device": "cpu",
    "rewards": ["jpeg_compressibility"],
    "quality": ["test_mean_brightness"],
}


def register_test_rewards() -> None:
    """A prompt-free "quality" reward for the tiny model (the shapes rewards need shapes prompts)."""
    from dpok.rewards import register_reward

    @register_reward("test_mean_brightness", overwrite=True)
    def _mean_brightness():
        def reward(images, prompts):
            return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255.0

        return reward


def make_evaluation_catalog(project_root: Path, root: Path, sampling: dict | None = None):
    """The project's ``catalog_evaluation.yml`` with every path under ``root`` and MLflow left out,
    plus a prompt file and the parameters (tiny settings)."""
    from kedro.io import DataCatalog

    register_test_rewards()
    names = yaml.safe_load((project_root / "conf/base/catalog_evaluation.yml").read_text())
    resolved = load_config(project_root)["catalog"]  # globals filled in
    catalog = DataCatalog.from_config({name: local_entry(resolved[name], root) for name in names})
    prompt_file = root / "prompts.csv"
    prompt_file.write_text(EVAL_PROMPTS_CSV)
    base = load_config(project_root)["parameters"]
    catalog["params:prompts"] = {"path": str(prompt_file), "max_chars": 300, "heldout_fraction": 0.0}
    catalog["params:pretrained_samples"], catalog["params:sampler"] = split_sampling(sampling or TINY_SAMPLING)
    catalog["params:evaluate"] = merged(base["evaluate"], {"bootstrap_resamples": 200, "grid_max_prompts": 4,
                                                           "grid_seeds": 2})
    catalog["params:human_eval"] = merged(base["human_eval"], {"seed": 3, "pairs_per_prompt": 2})
    catalog["params:human_eval_import"] = merged(base["human_eval_import"], {"confidence": 0.95})
    return catalog


def make_lora(folder: Path, scale: float) -> Path:
    """A diffusers-format LoRA for the tiny model; ``scale=0`` leaves B at zero (the base model)."""
    import torch

    from dpok.models import attach_lora, build_tiny_pipeline, save_lora

    pipeline = build_tiny_pipeline(seed=0)
    attach_lora(pipeline.unet, rank=4, alpha=4.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    if scale:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, weight in pipeline.unet.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    save_lora(pipeline.unet, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base_model():
    """The tiny random-weight pipeline (built once; the catalog deep-copies it on every load)."""
    from dpok.models import build_tiny_pipeline

    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def evaluation_catalog(project_root):
    """``fn(root, sampling=None) -> DataCatalog``: see :func:`make_evaluation_catalog`."""

    def make(root: Path, sampling: dict | None = None):
        return make_evaluation_catalog(project_root, root, sampling)

    return make


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory):
    """``fn(scale) -> LoRA folder`` (cached per scale)."""
    folders: dict[float, Path] = {}

    def make(scale: float) -> Path:
        if scale not in folders:
            folders[scale] = make_lora(tmp_path_factory.mktemp(f"lora_{scale}"), scale)
        return folders[scale]

    return make


@pytest.fixture
def tiny_sampling() -> dict:
    """The ``pretrained_samples`` and ``sampler`` parameters used with the tiny model, in one mapping."""
    register_test_rewards()
    return dict(TINY_SAMPLING)

"""The shipped base model loads in stock diffusers offline, and the pretrain pipeline runs end to end
on tiny settings (seconds) and writes a folder stock diffusers loads."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from dpok.datasets import DiffusersPipelineDataset
from dpok.pipelines.pretrain import create_pipeline
from dpok.pipelines.pretrain.nodes import validate_pretrain_params
from dpok.world import judge
from helpers import base_parameters

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data/06_models/shapes_base"


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped base model is not in this checkout")
def test_shipped_model_loads_in_stock_diffusers_offline_and_draws_the_prompt():
    pipe = StableDiffusionPipeline.from_pretrained(str(SHIPPED))  # HF_HUB_OFFLINE=1 (tests/conftest.py)
    assert pipe.safety_checker is None and pipe.scheduler.config.clip_sample is False
    assert pipe.tokenizer.init_kwargs["closed_vocabulary"] and len(pipe.tokenizer) < 200
    images = pipe(
        ["a yellow circle", "a blue square"] * 2, num_inference_steps=20, guidance_scale=3.0, eta=1.0,
        generator=[torch.Generator().manual_seed(s) for s in range(4)], output_type="np",
    ).images
    assert images.shape == (4, 32, 32, 3)
    uint8 = (images * 255).round().astype(np.uint8)
    assert judge(uint8, ["a yellow circle", "a blue square"] * 2).mean() > 0.8
    assert sum(p.numel() for p in pipe.unet.parameters()) < 10e6
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 30 * 2**20


REPORT = ROOT / "data/08_reporting/base_model_report.json"


@pytest.mark.skipif(not REPORT.exists(), reason="the base model report is not in this checkout")
def test_shipped_base_model_report_meets_the_targets_with_the_default_sampler():
    report = json.loads(REPORT.read_text())
    sampler = base_parameters()["sampler"]  # the shared sampler the pretrain report draws with
    settings = report["settings"]
    assert settings["eta"] == 1.0 and settings["seeds_per_prompt"] >= 16
    assert (settings["num_inference_steps"], settings["guidance_scale"]) == (
        sampler["num_inference_steps"], sampler["guidance_scale"],
    ), "the report must use the default step count and CFG"
    common, rare, unseen = (report["per_rarity"][k] for k in ("common", "rare", "unseen"))
    assert common["judge"] >= 0.85 and common["quality"] >= 0.9
    assert rare["judge"] <= 0.65, "rare prompts must leave RL room to improve"
    assert rare["quality"] >= 0.8 and unseen["quality"] >= 0.8


@pytest.mark.skipif(not (SHIPPED.exists() and REPORT.exists()), reason="no shipped model or report")
def test_report_is_what_the_shipped_model_samples():
    """The committed report belongs to the committed weights: resample two of its prompts, same seeds."""
    from dpok.evaluation.sampling import generate_seeded_images
    from dpok.world import quality

    report = json.loads(REPORT.read_text())
    settings = report["settings"]
    pipe = StableDiffusionPipeline.from_pretrained(str(SHIPPED))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a blue square", "a green triangle"]  # one common, one rare
    n = settings["seeds_per_prompt"]
    first = yaml.safe_load((ROOT / "conf/base/parameters_pretrain.yml").read_text())["pretrain_report"]["seed"]
    images = generate_seeded_images(
        pipe, [p for p in prompts for _ in range(n)], list(range(first, first + n)) * len(prompts),
        num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
        eta=settings["eta"], batch_size=2 * n,
    )
    for i, prompt in enumerate(prompts):
        chunk = images[i * n : (i + 1) * n]
        expected = report["per_prompt"][prompt]
        # Thread counts may change the last bits of a sample; a redrawn model changes these by far more.
        assert judge(chunk, [prompt] * n).mean() == pytest.approx(expected["judge"], abs=0.03)
        assert quality(chunk).mean() == pytest.approx(expected["quality"], abs=0.03)


def tiny_pretrain_params() -> dict:
    params = yaml.safe_load((ROOT / "conf/base/parameters_pretrain.yml").read_text())
    pretrain = copy.deepcopy(params["pretrain"])
    pretrain.update(num_images=64)
    pretrain["autoencoder"].update(steps=3, batch_size=8, refine_decoder_steps=2)
    pretrain["denoiser"].update(steps=3, batch_size=8)
    pretrain["denoiser"]["unet"].update(block_out_channels=[32, 32], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32)
    pretrain["denoiser"]["text_encoder"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    report = {**params["pretrain_report"], "seeds_per_prompt": 1, "extra_common_prompts": 1}
    return {"pretrain": pretrain, "pretrain_report": report,
            "sampler": {**base_parameters()["sampler"], "num_inference_steps": 2}}


def test_tiny_pretrain_run_writes_a_folder_stock_diffusers_loads(tmp_path):
    params = tiny_pretrain_params()
    catalog = DataCatalog()
    catalog["params:pretrain"] = MemoryDataset(params["pretrain"])
    catalog["params:pretrain_report"] = MemoryDataset(params["pretrain_report"])
    catalog["params:sampler"] = MemoryDataset(params["sampler"])
    catalog["params:prompts"] = MemoryDataset({**base_parameters()["prompts"], "path": str(ROOT / "data/01_raw/prompts/shapes_eval.csv")})
    catalog["shapes_base_model_out"] = DiffusersPipelineDataset(path=str(tmp_path / "model"))
    SequentialRunner().run(create_pipeline(), catalog)

    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    assert pipe("a green triangle", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the latents, not SD's constant
    report = catalog.load("base_model_report")
    assert set(report["per_rarity"]) == {"common", "rare", "unseen"}
    json.dumps(report)  # plain JSON
    assert catalog.load("base_model_grid").size[1] > 32
    assert catalog.load("pretrain_metrics")["pretrain_decoder_refinement_l1"]
    assert not list(tmp_path.glob(".model.tmp-*")), "the atomic write left a temp folder behind"


def test_decoder_refinement_trains_the_decoder_only_and_leaves_the_input_alone():
    from dpok.models import build_autoencoder
    from dpok.pretraining import AutoencoderConfig, refine_decoder, render_caption_dataset
    from dpok.world import CaptionSkew

    images, _ = render_caption_dataset(16, CaptionSkew(), seed=0, progress=False)
    torch.manual_seed(0)
    vae = build_autoencoder({"sample_size": 32, "block_out_channels": [8, 8, 8], "norm_num_groups": 4})
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    config = AutoencoderConfig.from_dict({**base_parameters()["pretrain"]["autoencoder"], "batch_size": 4,
                                          "refine_decoder_steps": 3, "refine_latent_noise": 0.5})
    refined, history = refine_decoder(vae, images, config, seed=0, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["l1"]) for h in history)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} of the input VAE changed"
    after = refined.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert any(k.startswith("decoder.") for k in changed)
    assert not any(p.requires_grad for p in refined.parameters())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["denoiser"].update(caption_dropout=1.5), "caption_dropout"),
        (lambda p: p["autoencoder"].update(steps=0), "pretrain.autoencoder.steps"),
        (lambda p: p["autoencoder"].update(reconstruction_loss="l2"), "reconstruction_loss"),
        (lambda p: p["autoencoder"].update(refine_decoder_steps=-1), "refine_decoder_steps"),
        (lambda p: p["autoencoder"].update(refine_latent_noise=float("nan")), "refine_latent_noise"),
        (lambda p: p["skew"].update(rare_factor=0), "rare_factor"),
        (lambda p: p["skew"].update(unseen_prompts=["a purple circle"]), "purple"),
        (lambda p: p.update(imagesize=32), "unknown key"),
    ],
)
def test_bad_pretrain_parameters(change, message):
    params = tiny_pretrain_params()["pretrain"]
    change(params)
    with pytest.raises(ValueError, match=message):
        validate_pretrain_params(params)

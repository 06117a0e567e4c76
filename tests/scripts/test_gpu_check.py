"""scripts/gpu_check.py: its --tiny run on the CPU (the same code as the GPU run), and its hard-coded
configs are Stable Diffusion v1.5's."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dpok.config import project_parameters


@pytest.fixture(scope="module")
def gpu_check(project_root):
    spec = importlib.util.spec_from_file_location("gpu_check", project_root / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_every_phase_as_json(gpu_check, tmp_path, capsys):
    output = tmp_path / "reports" / "gpu_check.json"
    report = gpu_check.main(["--tiny", "--device", "cpu", "--output", str(output)])
    lines = capsys.readouterr().out.splitlines()
    # Log lines of earlier tests' handlers may precede it; the report is the last top-level JSON object.
    printed = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{"):]))
    assert printed == json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert report["finite"] is True and report["tiny"] is True
    assert (report["batch"], report["steps"], report["guidance_scale"]) == (2, 3, 7.5)
    assert (report["dtype"], report["precision"]) == ("float16", "fp16")  # conf/sd15's precision
    for phase in ("pipeline", "sampler", "sampler_without_autocast", "imagereward"):
        assert report[phase]["seconds"] > 0 and report[phase]["peak_memory_gib"] is None  # no GPU here
        assert report[phase]["samples_per_second"] == pytest.approx(2 / report[phase]["seconds"])
    ratio = report["sampler"]["seconds"] / report["pipeline"]["seconds"]
    assert report["sampler_to_pipeline_ratio"] == pytest.approx(ratio)
    plain = report["sampler_without_autocast"]["seconds"] / report["pipeline"]["seconds"]
    assert report["sampler_without_autocast_to_pipeline_ratio"] == pytest.approx(plain)
    # an unchanged policy rescored in fp16 at another batch shape: ratio 1 (the step's arithmetic is float32;
    # in the model's dtype it was |log ρ| ≈ 3e-3 here, 30 times the clip)
    assert report["rescoring_log_ratio"]["max"] <= 1e-5
    # a whole round (2 trajectories × 3 steps) rescored by the update itself: exact (issue 29)
    assert report["rescoring_log_ratio"]["transitions"] == 6
    assert report["first_update_max_abs_log_ratio"] == report["rescoring_log_ratio"]["max"] <= 1e-6
    baseline = report["dpok_round_fp32_eager"]
    phases = ("seconds_sampling", "seconds_reward", "seconds_kl_report", "seconds_buffer", "seconds_value", "seconds_policy")
    assert report["speedup_over_fp32_eager"] == pytest.approx(
        sum(baseline[k] for k in phases) / sum(report["dpok_round"][k] for k in phases))
    flops = report["unet_flops"]
    assert 0 < flops["per_guided_prediction"] < flops["per_trained_transition"] < flops["per_round"]
    assert report["fraction_of_gemm_peak"] == pytest.approx(
        report["unet_flops_per_second"] / report["gemm_peak_flops_per_second"])
    first, other = report["dpok_round"], report["dpok_round_other_checkpointing"]
    assert (first["gradient_checkpointing"], other["gradient_checkpointing"]) == (False, True)
    for row in (first, other):
        assert row["micro_batches"] == row["policy_steps"] == 4 and row["skipped_steps"] < 4 and row["finite"]
        assert row["clip_range"] == 1e-4 and row["ratio_dev"] >= 0 and 0 <= row["clip_fraction"] <= 1
        parts = sum(row[k] for k in ("seconds_sampling", "seconds_reward", "seconds_kl_report", "seconds_buffer", "seconds_value", "seconds_policy"))
        assert 0 < parts <= row["seconds"]


def test_the_round_uses_conf_sd15s_rl_settings(gpu_check, project_root):
    params = project_parameters("sd15")  # what `kedro run --env sd15` trains with
    rl, sampler = gpu_check.sd15_settings(tiny=False)
    assert sampler == params["sampler"] and sampler["num_inference_steps"] == 50
    expected = params["finetune"]["rl"]
    expected["runtime"].update(num_rounds=1, checkpoint_every=1, resume=False)
    assert rl == expected


def test_the_hard_coded_configs_are_stable_diffusion_v1_5s(gpu_check):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dpok.models.imagereward import build_imagereward_model

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):  # shapes only: no memory, no time
        unet = UNet2DConditionModel(**gpu_check.SD15_UNET)
        vae = AutoencoderKL(**gpu_check.SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**gpu_check.SD15_TEXT))
        imagereward = build_imagereward_model(gpu_check.IMAGEREWARD_MED, gpu_check.IMAGEREWARD_VISION)
    # the parameter counts of SD v1.5's unet/, vae/ and text_encoder/ checkpoints
    assert (count(unet), count(vae), count(text)) == (859_520_964, 83_653_863, 123_060_480)
    assert count(imagereward) == 446_665_953  # BLIP ViT-L + BERT-base with cross-attention + heads: 1.79 GB in float32
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 512

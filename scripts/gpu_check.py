"""GPU check of the `sd15` setting with random weights and no download: speed, memory, finiteness.

    python scripts/gpu_check.py [--tiny] [--output gpu_check.json] [--batch 8] [--steps 50] [--repeats 2]

Builds Stable Diffusion v1.5's UNet, VAE and CLIP text encoder from their published configs (hard-coded
below) with random weights, a word tokenizer padded to 77 tokens, the DDIM scheduler with SD's settings,
and an ImageReward model of the real size (BLIP ViT-L/16 + BERT-base, random weights), then times:

1. ``pipeline``: the stock ``StableDiffusionPipeline`` call (DDIM η = 1, ``--steps``, CFG ``--guidance``,
   ``--batch`` images, decoded to numpy);
2. ``sampler``: :func:`dpok.rl.sample_trajectories` on the same batch (log-probs, all latents kept), under
   the mixed precision of ``conf/sd15``; ``sampler_to_pipeline_ratio`` compares the medians;
   ``sampler_without_autocast`` times it again outside autocast, in the weights' dtype as the stock call runs;
   ``rescoring_log_ratio``: |log ρ| of every transition of a round (``conf/sd15``'s g_batch, a fresh LoRA)
   rescored by the policy update's own computation before any update (``first_update_max_abs_log_ratio``:
   its maximum, 0 when the ratio is exact);
3. ``imagereward``: scoring the sampler's images with the ImageReward model (fp16 on GPU);
4. ``dpok_round``: one round of :func:`dpok.rl.train_dpok` with ``conf/sd15/parameters_finetune.yml``'s RL
   settings (g_batch 10, 50 steps, value steps, p_step 5 × accum 12 × p_batch 4 with LoRA rank 4, fp16),
   ImageReward as the reward; ``dpok_round_fp32_eager``: the same round in float32 (a float32 copy of the
   UNet, ``runtime.precision: fp32``, uncompiled) and ``speedup_over_fp32_eager``; ``unet_flops_per_second``:
   the round's UNet FLOPs (``torch.utils.flop_counter``) over its phases' seconds, against
   ``gemm_peak_flops_per_second``, the best square matmul in the round's dtype; then
   ``dpok_round_other_checkpointing``: the same round with
   ``gradient_checkpointing`` flipped (memory against time of the policy steps).

Prints one JSON object (seconds, samples/s, peak GPU memory in GiB per phase, whether every number was
finite) and writes it to ``--output`` if given. Needs torch, transformers, peft, accelerate, diffusers
and PyYAML, and this repository's ``src`` (added to ``sys.path`` when ``dpok`` is not installed).
``--tiny`` swaps in tiny configs, 3 steps and a shrunk round, so the same code runs on a CPU in seconds
(``tests/scripts/test_gpu_check.py``). Random weights produce meaningless images; only the computation
is the real one. Calls alternate stock/ours after a warm-up so drift hits both alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    import dpok  # noqa: F401
except ImportError:  # a bare checkout on a GPU machine: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from dpok.config import merged, with_overrides  # noqa: E402

# Stable Diffusion v1.5's component configs (stable-diffusion-v1-5/stable-diffusion-v1-5, */config.json).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1.0, center_input_sample=False,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    act_fn="silu", norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT = dict(  # CLIP ViT-L/14's text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
# ImageReward: BLIP's med_config.json (BERT-base with cross-attention) and the default ViT-L/16 at 224.
IMAGEREWARD_MED = dict(
    vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0,
    add_cross_attention=True, encoder_width=768,
)
IMAGEREWARD_VISION: dict[str, Any] = {}

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8, sample_size=16, scaling_factor=0.18215,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=32)
TINY_MED = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=40, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0, add_cross_attention=True,
)
TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=4)
TINY_ROUND = {"rollout.g_batch": 2, "policy.p_batch": 2, "policy.accum": 1, "policy.p_step": 4,
              "policy.buffer_size": 16, "value.batch_size": 8, "value.steps": 1, "runtime.kl_report_trajectories": 1}
TINY_SAMPLER = {"num_inference_steps": 3}
ONE_ROUND = {"runtime.num_rounds": 1, "runtime.checkpoint_every": 1, "runtime.resume": False}

PROMPT = "a green colored rabbit"
ROUND_PHASES = ("seconds_sampling", "seconds_reward", "seconds_kl_report", "seconds_buffer", "seconds_value",
                "seconds_policy")
WORDS = "a an and the of in on green colored rabbit cat dog four wolves park moon photo".split()
GIB = 1024**3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def build_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype, latent_size: int | None):
    """SD v1.5's (or the tiny) components with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dpok.models import assemble_pipeline, build_ddim_scheduler, build_word_tokenizer
    from dpok.models.tokenizer import BOS, EOS

    configs = (TINY_UNET, TINY_VAE, TINY_TEXT) if tiny else (SD15_UNET, SD15_VAE, SD15_TEXT)
    unet_config, vae_config, text_config = configs
    if latent_size:
        unet_config = dict(unet_config, sample_size=latent_size)
    tokenizer = build_word_tokenizer(WORDS, model_max_length=77)
    text_config = dict(text_config, vocab_size=text_config.get("vocab_size", len(tokenizer)))
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **text_config, bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
            eos_token_id=tokenizer.convert_tokens_to_ids(EOS), pad_token_id=tokenizer.pad_token_id,
        ))
    pipeline = assemble_pipeline(vae, unet, text_encoder, tokenizer, build_ddim_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False).eval()
    return pipeline.to(device=device, dtype=dtype)


def build_imagereward(tiny: bool, device: torch.device):
    """An ImageReward scorer of the real (or tiny) size with random weights, fp16 on CUDA."""
    from transformers import BertTokenizer

    from dpok.models.imagereward import ImageRewardScorer, build_imagereward_model

    med, vision = (TINY_MED, TINY_VISION) if tiny else (IMAGEREWARD_MED, IMAGEREWARD_VISION)
    # BLIP's layout at the model's size: a BERT vocabulary (the words, then fillers), then [DEC] and [ENC]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [f"[unused{i}]" for i in range(med["vocab_size"] - 2 - len(vocab))]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(0)
    with torch.device(device):
        model = build_imagereward_model(med, vision)
    return ImageRewardScorer(model, tokenizer, device=device, dtype="auto", batch_size=16)


def sd15_settings(tiny: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``finetune.rl`` and ``sampler`` as `kedro run --env sd15` merges them, for one round."""
    # conf/sd15 holds only what differs from conf/base: merged key by key as Kedro's soft merge does
    # (without importing Kedro, which the GPU machine may lack)
    rl, sampler = {}, {}
    for env in ("base", "sd15"):
        rl = merged(rl, yaml.safe_load((ROOT / f"conf/{env}/parameters_finetune.yml").read_text())["finetune"]["rl"])
        sampler_file = ROOT / f"conf/{env}/parameters_sampler.yml"
        if sampler_file.is_file():
            sampler = merged(sampler, yaml.safe_load(sampler_file.read_text())["sampler"])
    rl = with_overrides(rl, ONE_ROUND | (TINY_ROUND if tiny else {}), "finetune.rl")
    if tiny:
        sampler = with_overrides(sampler, TINY_SAMPLER, "sampler")
    return rl, sampler


def _all_finite(*arrays: Any) -> bool:
    return all(bool(np.isfinite(np.asarray(a, dtype=np.float64)).all()) for a in arrays)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import transformers

    from dpok.bench import gemm_peak_flops, unet_flops
    from dpok.images import uint8_images_to_pixels
    from dpok.rl import FinetuneConfig, sample_trajectories, train_dpok
    from dpok.rl.precision import diffusion_passes, resolve_precision

    diffusers.utils.logging.set_verbosity_error()  # no warnings about float16 on a CPU in --tiny runs
    transformers.utils.logging.set_verbosity_error()

    started = time.perf_counter()
    device = torch.device(args.device)
    rl, sampler = sd15_settings(args.tiny)
    if args.precision:
        rl["runtime"]["precision"] = args.precision
    dtype = getattr(torch, args.dtype)
    # what train_dpok resolves conf/sd15's runtime.precision to on this device (refused here if it cannot run)
    precision = resolve_precision(FinetuneConfig.from_params(rl, sampler).runtime, device, dtype)
    steps = args.steps or sampler["num_inference_steps"]
    guidance = args.guidance if args.guidance is not None else sampler["guidance_scale"]
    report: dict[str, Any] = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "tiny": args.tiny,
        "dtype": args.dtype,
        "precision": precision.name,
        "batch": args.batch,
        "steps": steps,
        "guidance_scale": guidance,
    }

    seconds, pipeline = _timed(lambda: build_pipeline(args.tiny, device, dtype, args.latent_size), device)
    report["diffusers"] = diffusers.__version__
    report["resolution"] = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    report["build_seconds"] = seconds
    prompts = [PROMPT] * args.batch

    def stock():
        return pipeline(prompts, num_inference_steps=steps, guidance_scale=guidance, eta=1.0, output_type="np",
                        generator=torch.Generator(device).manual_seed(0)).images

    def ours_without_autocast():
        # the sampler alone, in the weights' dtype like the stock call (no LoRA attached here): tells the
        # sampler's own cost apart from that of the trainer's autocast
        return sample_trajectories(pipeline, prompts, num_inference_steps=steps, guidance_scale=guidance, eta=1.0,
                                   generator=torch.Generator(device).manual_seed(0))

    def ours():
        # as train_dpok samples: in conf/sd15's precision (autocast on a GPU)
        with diffusion_passes(pipeline.unet, precision):
            return ours_without_autocast()

    with torch.no_grad():
        stock_images, trajectory = stock(), ours()  # warm-up (kernels, allocator)
        ours_without_autocast()
        times: dict[str, list[float]] = {"pipeline": [], "sampler": [], "sampler_without_autocast": []}
        peaks: dict[str, float | None] = {}
        for _ in range(args.repeats):
            phases = (("pipeline", stock), ("sampler", ours), ("sampler_without_autocast", ours_without_autocast))
            for name, fn in phases:
                _reset_peak(device)
                seconds, out = _timed(fn, device)
                times[name].append(seconds)
                peaks[name] = _peak_gib(device)
                if name == "pipeline":
                    stock_images = out
                elif name == "sampler":
                    trajectory = out
    for name in ("pipeline", "sampler", "sampler_without_autocast"):
        median = statistics.median(times[name])
        report[name] = {"seconds": median, "all_seconds": times[name], "samples_per_second": args.batch / median,
                        "peak_memory_gib": peaks[name]}
    report["sampler_to_pipeline_ratio"] = report["sampler"]["seconds"] / report["pipeline"]["seconds"]
    report["sampler_without_autocast_to_pipeline_ratio"] = (
        report["sampler_without_autocast"]["seconds"] / report["pipeline"]["seconds"]
    )
    report["sampler"]["finite"] = _all_finite(trajectory.log_probs.cpu(), trajectory.latents.float().cpu())
    ratio_config = FinetuneConfig.from_params(rl, sampler)
    report["rescoring_log_ratio"] = rescoring_log_ratio(pipeline, ratio_config)
    report["first_update_max_abs_log_ratio"] = report["rescoring_log_ratio"]["max"]
    report["pipeline"]["finite"] = _all_finite(stock_images)

    scorer = build_imagereward(args.tiny, device)
    pixels = uint8_images_to_pixels(trajectory.images)
    scorer.score(pixels, prompts)  # warm-up
    _reset_peak(device)
    seconds, scores = _timed(lambda: scorer.score(pixels, prompts), device)
    report["imagereward"] = {"seconds": seconds, "samples_per_second": args.batch / seconds,
                             "peak_memory_gib": _peak_gib(device), "finite": _all_finite(scores.numpy())}
    del trajectory, stock_images

    def imagereward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return scorer.score(uint8_images_to_pixels(images), prompts).double().numpy()

    for key, checkpointing in (("dpok_round", rl["runtime"]["gradient_checkpointing"]),
                               ("dpok_round_other_checkpointing", not rl["runtime"]["gradient_checkpointing"])):
        config = FinetuneConfig.from_params(
            with_overrides(rl, {"runtime.gradient_checkpointing": checkpointing}, "finetune.rl"), sampler
        )
        round_pipeline = with_fresh_unet(pipeline)
        _reset_peak(device)
        with tempfile.TemporaryDirectory() as folder:
            seconds, result = _timed(
                lambda pipe=round_pipeline: train_dpok(pipe, [PROMPT], imagereward, config, folder, progress=False),
                device,
            )
        row = result.history[0]
        report[key] = {
            "gradient_checkpointing": checkpointing,
            "seconds": seconds,
            **{k: row[k] for k in ROUND_PHASES},
            "images": config.rollout.g_batch,
            "policy_steps": config.policy.p_step,
            "micro_batches": config.policy.p_step * config.policy.accum,
            "transitions_per_policy_step": config.policy.p_batch * config.policy.accum,
            "skipped_steps": row["skipped_steps"],
            # with a fresh LoRA the policy is the sampler: |ρ − 1| measures the precision's noise against clip_range
            **{k: row[k] for k in ("ratio_dev", "clip_fraction", "grad_norm", "kl_bound_nats")},
            "clip_range": config.policy.clip_range,
            "peak_memory_gib": _peak_gib(device),
            # fp16 loss scaling may skip the first steps (it starts at 2**16 and halves on overflow)
            "finite": _all_finite(row["reward_mean"], row["value_loss"], row["kl_bound_nats"])
            and row["skipped_steps"] < config.policy.p_step,
        }
        del round_pipeline, result

    # the same round in float32 eager, on a float32 copy of the UNet: the baseline of the speedup
    baseline_config = FinetuneConfig.from_params(
        with_overrides(rl, {"runtime.precision": "fp32", "runtime.compile": False}, "finetune.rl"), sampler
    )
    round_pipeline = with_fresh_unet(pipeline)
    round_pipeline.unet.float()
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as folder:
        seconds, result = _timed(
            lambda pipe=round_pipeline: train_dpok(pipe, [PROMPT], imagereward, baseline_config, folder, progress=False),
            device,
        )
    row = result.history[0]
    report["dpok_round_fp32_eager"] = {"seconds": seconds, **{k: row[k] for k in ROUND_PHASES},
                                       "peak_memory_gib": _peak_gib(device)}
    del round_pipeline, result
    report["speedup_over_fp32_eager"] = (
        sum(report["dpok_round_fp32_eager"][k] for k in ROUND_PHASES) / sum(report["dpok_round"][k] for k in ROUND_PHASES)
    )
    config = FinetuneConfig.from_params(rl, sampler)
    report["unet_flops"] = unet_flops(pipeline, config)
    report["unet_flops_per_second"] = report["unet_flops"]["per_round"] / sum(report["dpok_round"][k] for k in ROUND_PHASES)
    report["gemm_peak_flops_per_second"] = gemm_peak_flops(precision.dtype or torch.float32, device,
                                                           size=1024 if args.tiny else 8192)
    report["fraction_of_gemm_peak"] = report["unet_flops_per_second"] / report["gemm_peak_flops_per_second"]
    report["finite"] = all(report[k]["finite"] for k in ("pipeline", "sampler", "imagereward", "dpok_round"))
    report["total_seconds"] = time.perf_counter() - started
    return report


def rescoring_log_ratio(pipeline, config) -> dict[str, float]:
    """|log ρ| of an unchanged policy on a whole round: round 1 sampled with a fresh LoRA on a copy of the
    pipeline, every transition rescored by the policy update's own computation (its micro-batches, precision
    and call shapes). Anything above 0 is rounding noise that the ratio clip (1e-4 in ``conf/sd15``) sees as
    policy change."""
    from dpok.bench import fresh_round_context
    from dpok.rl.rollout import rollout
    from dpok.rl.update import rescoring_log_ratios

    context = fresh_round_context(pipeline, [PROMPT], None, config)
    _, _, trajectory = rollout(context, 1)
    gaps = rescoring_log_ratios(context, trajectory)
    return {"mean": float(gaps.mean()), "max": float(gaps.max()), "transitions": int(gaps.numel())}


def with_fresh_unet(pipeline):
    """A pipeline sharing ``pipeline``'s VAE, text encoder and tokenizer with a copy of its UNet
    (``train_dpok`` attaches its LoRA to the UNet in place)."""
    from dpok.models import assemble_pipeline

    fresh = assemble_pipeline(pipeline.vae, copy.deepcopy(pipeline.unet), pipeline.text_encoder, pipeline.tokenizer,
                              copy.deepcopy(pipeline.scheduler))
    fresh.set_progress_bar_config(disable=True)
    return fresh


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 3 steps, shrunk round (CPU, seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"],
                        help="weights of the SD components (conf/sd15/catalog.yml: float16)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None,
                        help="override conf/sd15's finetune.rl.runtime.precision")
    parser.add_argument("--batch", type=int, default=None, help="images per sampling call (default 8; tiny 2)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: conf/sd15, 50; tiny 3)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: conf/sd15, 7.5)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each sampler after a warm-up")
    parser.add_argument("--latent-size", type=int, default=None, help="UNet sample size override (64 is 512 px)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 2 if args.tiny else 8
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

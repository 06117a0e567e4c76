"""Thin nodes over :mod:`dpok.evaluation`: fine-tuned samples, metrics, figures, report, human-eval export."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from diffusers import StableDiffusionPipeline
from PIL import Image

from dpok.evaluation import (
    EvaluateConfig,
    HumanEvalConfig,
    LazyScoredSamples,
    SamplingConfig,
    blinded_images,
    build_pairs,
    comparison_grid,
    comparison_metrics,
    flat_metrics,
    pair_manifests,
    per_prompt_differences,
    render_page,
    render_report,
)
from dpok.evaluation.manifest import PLAN_COLUMNS, check_saved, finish_sample_set
from dpok.evaluation.sampling import pipeline_sampler, score_functions
from dpok.models import load_lora

logger = logging.getLogger(__name__)


_RERUN_BASE = "`kedro run --pipelines pretrained_samples`"


def _check_same_settings(pretrained_summary: dict[str, Any], config: SamplingConfig) -> None:
    saved, current = pretrained_summary.get("settings", {}), config.sampler_settings()
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
        raise ValueError(
            "the base-model samples were drawn with other settings than `pretrained_samples` and `sampler` now "
            f"give ({', '.join(f'{k}: {a!r} → {b!r}' for k, (a, b) in changed.items())}); rerun "
            f"{_RERUN_BASE} so both models see the same prompts and noise"
        )
    scored, wanted = sorted(pretrained_summary.get("scores", {})), sorted(config.score_kinds())
    if scored != wanted:
        raise ValueError(
            f"the base-model samples were scored with {scored} but `pretrained_samples` now lists {wanted}; "
            f"rerun {_RERUN_BASE} so both models are scored alike"
        )


def sample_finetuned_images(
    base_model: StableDiffusionPipeline,
    lora: Path,
    pretrained_manifest: pd.DataFrame,
    pretrained_sampling_summary: dict[str, Any],
    params: dict[str, Any],
    sampler: dict[str, Any],
) -> tuple[dict[str, Callable[[], Image.Image]], LazyScoredSamples]:
    """The base model's prompts and seeds again, with the LoRA loaded; drawn and scored lazily."""
    started = time.perf_counter()
    config = SamplingConfig.from_params(params, sampler)
    _check_same_settings(pretrained_sampling_summary, config)
    score_fns = score_functions({**config.rewards, **config.quality})
    scores = pretrained_sampling_summary["scores"]
    extra = [c for c in pretrained_manifest.columns if c not in PLAN_COLUMNS and c not in scores]
    plan = pretrained_manifest[list(PLAN_COLUMNS) + extra]
    pipeline = load_lora(base_model, lora)
    sampler = pipeline_sampler(
        pipeline, num_inference_steps=config.sampler.num_inference_steps,
        guidance_scale=config.sampler.guidance_scale, eta=config.sampler.eta, device=config.device,
    )
    samples = LazyScoredSamples(plan, sampler, score_fns, config.batch_size, started=started)
    logger.info("Fine-tuned model (LoRA %s): %d images on the base model's prompts and seeds", lora, len(plan))
    return samples.partitions(), samples


def write_finetuned_manifest(
    finetuned_samples: dict[str, Any], samples: LazyScoredSamples, params: dict[str, Any], sampler: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Once the PNGs are written: the manifest, the sampling summary and its MLflow metrics."""
    config = SamplingConfig.from_params(params, sampler)
    return finish_sample_set(
        samples, finetuned_samples, config.sampler_settings(), config.score_kinds(), "finetuned", "Fine-tuned"
    )


def compare_scores(
    pretrained_manifest: pd.DataFrame, finetuned_manifest: pd.DataFrame, sampling_params: dict[str, Any],
    sampler: dict[str, Any], params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json (means, bootstrap CIs, paired differences per split and category) and its MLflow form."""
    sampling, config = SamplingConfig.from_params(sampling_params, sampler), EvaluateConfig.from_dict(params)
    kinds = sampling.score_kinds()
    paired = pair_manifests(pretrained_manifest, finetuned_manifest, list(kinds))
    metrics = comparison_metrics(
        paired, kinds, n_resamples=config.bootstrap_resamples, confidence=config.confidence, seed=config.bootstrap_seed
    )
    for name in kinds:
        d = metrics["all"][name]["difference"]
        logger.info("%s: fine-tuned − base = %+.4f [%+.4f, %+.4f] over %d pairs",
                    name, d["mean"], d["ci_low"], d["ci_high"], d["n"])
    return metrics, {key: {"value": value, "step": 0} for key, value in flat_metrics(metrics).items()}


def _check_sets(pretrained_manifest, finetuned_manifest, pretrained_samples, finetuned_samples) -> None:
    """The stored image sets are the ones their manifests describe (not a set half-replaced by a killed run)."""
    check_saved(pretrained_manifest, pretrained_samples, "base-model", rerun="kedro run --pipelines pretrained_samples")
    check_saved(finetuned_manifest, finetuned_samples, "fine-tuned", rerun="kedro run --pipelines evaluate")


def draw_comparison_grid(
    pretrained_manifest: pd.DataFrame, finetuned_manifest: pd.DataFrame,
    pretrained_samples: dict[str, Callable], finetuned_samples: dict[str, Callable], params: dict[str, Any],
) -> Image.Image:
    """Rows: prompts (spread over splits and categories); columns: base | fine-tuned at the same seeds."""
    _check_sets(pretrained_manifest, finetuned_manifest, pretrained_samples, finetuned_samples)
    config = EvaluateConfig.from_dict(params)
    return comparison_grid(
        pretrained_manifest, finetuned_manifest, pretrained_samples, finetuned_samples,
        max_prompts=config.grid_max_prompts, n_seeds=config.grid_seeds, scale=config.grid_scale,
    )


def export_human_eval(
    pretrained_manifest: pd.DataFrame, finetuned_manifest: pd.DataFrame,
    pretrained_samples: dict[str, Callable], finetuned_samples: dict[str, Callable], params: dict[str, Any],
) -> tuple[dict[str, Callable[[], Image.Image]], str, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The raters' folder (images, index.html, pairs.csv), the key (kept outside it) and a summary."""
    _check_sets(pretrained_manifest, finetuned_manifest, pretrained_samples, finetuned_samples)
    config = HumanEvalConfig.from_dict(params)
    pairs, key = build_pairs(
        pretrained_manifest, finetuned_manifest, pairs_per_prompt=config.pairs_per_prompt, seed=config.seed
    )
    images = blinded_images(key, {"base": pretrained_samples, "finetuned": finetuned_samples})
    export_id = hashlib.sha256("|".join(pairs["pair_id"]).encode()).hexdigest()[:12]
    page = render_page(pairs, title=config.title, export_id=export_id)
    summary = {"n_pairs": int(len(pairs)), "n_prompts": int(key["prompt"].nunique()), "seed": config.seed}
    logger.info("Human evaluation: %d blinded pairs over %d prompts exported", summary["n_pairs"], summary["n_prompts"])
    return images, page, pairs, key, summary


def write_report(
    metrics: dict[str, Any],
    pretrained_manifest: pd.DataFrame,
    finetuned_manifest: pd.DataFrame,
    finetuned_sampling_summary: dict[str, Any],
    human_eval_summary: dict[str, Any],
    comparison_grid: Image.Image,
    finetune_curves: Image.Image,
    finetune_reward_curves: Image.Image,
    sampling_params: dict[str, Any],
    sampler: dict[str, Any],
    params: dict[str, Any],
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """report.md and the evaluate pipeline's time split (runs last: it takes every figure it links as input,
    the finetune pipeline's curves included, which sit in the same folder)."""
    sampling, config = SamplingConfig.from_params(sampling_params, sampler), EvaluateConfig.from_dict(params)
    timing = dict(finetuned_sampling_summary["timing"])
    wall = max(time.time() - timing["started_unix"], 1e-9)
    timing["pipeline_wall_seconds"] = wall
    timing["pipeline_outside_sampling_share"] = 1.0 - timing["sampling_seconds"] / wall
    logger.info(
        "evaluate: %.1f s from the sampling node's start to the report, %.1f s sampling: %.0f %% outside sampling",
        wall, timing["sampling_seconds"], 100 * timing["pipeline_outside_sampling_share"],
    )
    paired = pair_manifests(pretrained_manifest, finetuned_manifest, list(metrics["scores"]))
    report = render_report(
        metrics,
        timing=timing,
        settings=sampling.sampler_settings(),
        prompt_changes=per_prompt_differences(paired, next(iter(metrics["scores"]))),
        figures={
            "Base vs fine-tuned at the same seeds": "comparison_grid.png",
            # written by the finetune pipeline into the same folder
            "Learning curves": "finetune_curves.png",
            "Training reward by category": "finetune_reward_curves.png",
        },
        human_eval=human_eval_summary,
        top_prompts=config.report_top_prompts,
    )
    mlflow_metrics = {
        f"evaluate.timing.{k}": {"value": float(timing[k]), "step": 0}
        for k in ("pipeline_wall_seconds", "pipeline_outside_sampling_share", "sampling_seconds",
                  "scoring_seconds", "writing_seconds")
    }
    return report, timing, mlflow_metrics

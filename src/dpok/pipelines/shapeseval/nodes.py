"""Thin nodes over :mod:`dpok.prompts.shapeseval` (the split and its gate) and :mod:`dpok.evaluation.shapeseval`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from diffusers import StableDiffusionPipeline
from PIL import Image

from dpok.evaluation.sampling import score_functions
from dpok.evaluation.shapeseval import (
    ACCURACY,
    ShapesEvalConfig,
    accuracy_chart,
    benchmark_metrics,
    flat_metrics,
    markdown_report,
    paired_scores,
    prompt_set_digest,
    score_model,
)
from dpok.models import load_lora
from dpok.prompts.shapeseval import SPLIT_FILE, benchmark_prompts, check_split_table, split_sizes

logger = logging.getLogger(__name__)

_SOURCE = f"{SPLIT_FILE} (catalog entry shapeseval_prompts)"


def check_shapeseval_inputs(
    shapeseval_prompts: pd.DataFrame, params: dict[str, Any], sampler: dict[str, Any],
    evaluation_sampling: dict[str, Any],
) -> pd.DataFrame:
    """Everything that can be wrong before a model is loaded (settings, score names, every line of the split):
    one error naming the key or the file line. Returns the test prompts with their tags."""
    config = ShapesEvalConfig.from_params(params, sampler)
    score_functions({**config.sampling.rewards, **config.sampling.quality})  # unknown names fail here
    table = check_split_table(shapeseval_prompts, _SOURCE)
    if config.sampling.seed == evaluation_sampling.get("seed"):
        logger.warning("shapeseval.sampling.seed equals pretrained_samples.seed: ShapesEval reuses the evaluation's "
                       "noise; give it a seed of its own")
    logger.info("ShapesEval split (prompts per category and split):\n%s", split_sizes(table).to_string())
    return benchmark_prompts(table)


def _score(pipeline: StableDiffusionPipeline, test_prompts: pd.DataFrame, params: dict[str, Any],
           sampler: dict[str, Any], label: str, started: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    config = ShapesEvalConfig.from_params(params, sampler)
    score_fns = score_functions({**config.sampling.rewards, **config.sampling.quality})
    manifest, timing = score_model(pipeline, test_prompts, config.sampling, score_fns, started=started)
    logger.info("ShapesEval, %s: %d images in %.1f s (%.1f images/s), scored in %.1f s; mean %s",
                label, timing["images"], timing["sampling_seconds"], timing["images_per_second"],
                timing["scoring_seconds"], {n: round(float(manifest[n].mean()), 4) for n in score_fns})
    return manifest, timing


def score_base_on_shapeseval(
    base_model: StableDiffusionPipeline, test_prompts: pd.DataFrame, params: dict[str, Any], sampler: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The base model on every test prompt and seed, scored batch by batch (no image kept)."""
    return _score(base_model, test_prompts, params, sampler, "base model", time.perf_counter())


def score_finetuned_on_shapeseval(
    base_model: StableDiffusionPipeline, lora: Path, test_prompts: pd.DataFrame, params: dict[str, Any],
    sampler: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The base model with the LoRA loaded, on the same prompts and seeds."""
    started = time.perf_counter()
    return _score(load_lora(base_model, lora), test_prompts, params, sampler, f"fine-tuned (LoRA {lora})", started)


def compare_shapeseval_scores(
    base_manifest: pd.DataFrame, finetuned_manifest: pd.DataFrame, base_timing: dict[str, Any],
    finetuned_timing: dict[str, Any], params: dict[str, Any], sampler: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """shapeseval.json (accuracy, scores, paired differences with CIs, settings, time), the per-image table and
    the metrics for MLflow."""
    config = ShapesEvalConfig.from_params(params, sampler)
    kinds = config.score_kinds()
    paired = paired_scores(base_manifest, finetuned_manifest, kinds, config.solved_score, config.solved_threshold)
    metrics = benchmark_metrics(
        paired, kinds, solved_score=config.solved_score, solved_threshold=config.solved_threshold,
        n_resamples=config.bootstrap_resamples, confidence=config.confidence, seed=config.bootstrap_seed,
    )
    metrics["settings"] = {**config.sampling.sampler_settings(), "split_file": SPLIT_FILE,
                           "test_set_sha256": prompt_set_digest(base_manifest.drop_duplicates("prompt"))}
    metrics["timing"] = {
        "base": base_timing, "finetuned": finetuned_timing,
        # from the base model's sampling node's start to these numbers (both models, scoring, statistics)
        "wall_seconds": time.time() - base_timing["started_unix"],
    }
    for label, block in (("overall (mean of categories)", metrics["overall"]),
                         ("overall (image-weighted)", metrics["image_weighted"]), *metrics["per_category"].items()):
        acc = block[ACCURACY]
        d = acc["difference"]
        logger.info("ShapesEval accuracy, %s: %.3f → %.3f, %+.3f [%+.3f, %+.3f]", label, acc["base"]["mean"],
                    acc["finetuned"]["mean"], d["mean"], d["ci_low"], d["ci_high"])
    mlflow_metrics = {key: {"value": value, "step": 0} for key, value in flat_metrics(metrics).items()}
    mlflow_metrics["shapeseval.timing.wall_seconds"] = {"value": metrics["timing"]["wall_seconds"], "step": 0}
    return metrics, paired, mlflow_metrics


def draw_shapeseval_chart(metrics: dict[str, Any]) -> Image.Image:
    """Accuracy per category and overall, base vs fine-tuned, with CIs and the paired difference."""
    return accuracy_chart(metrics)


def write_shapeseval_report(metrics: dict[str, Any], chart: Image.Image) -> str:
    """shapeseval.md (runs after the chart it links, which sits next to it)."""
    return markdown_report(metrics, metrics["settings"], metrics["timing"])

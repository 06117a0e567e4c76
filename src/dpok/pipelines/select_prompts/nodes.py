"""Thin nodes over :mod:`dpok.prompts.headroom` and the evaluation sampler."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from diffusers import StableDiffusionPipeline
from tqdm.auto import tqdm

from dpok.evaluation import SamplingConfig, derive_seeds
from dpok.evaluation.sampling import pipeline_sampler, score_functions
from dpok.prompts.headroom import SelectPromptsConfig, select_headroom_prompts, select_pool_prompts, solve_rates
from dpok.prompts.shapeseval import SPLIT_FILE, check_split_table
from dpok.world.grammar import CATEGORIES, enumerate_prompts, parse_prompt

logger = logging.getLogger(__name__)


def measure_candidates(
    base_model: StableDiffusionPipeline, params: dict[str, Any], sampling: dict[str, Any], sampler: dict[str, Any]
) -> pd.DataFrame:
    """Every grammar prompt × ``num_seeds`` seeds from the base model, scored: one row per image."""
    selection = SelectPromptsConfig.from_dict(params)
    num_seeds, seed, score = selection.num_seeds, selection.seed, selection.score
    config = SamplingConfig.from_params(sampling, sampler)
    if seed == config.seed:
        logger.warning("select_prompts.seed equals pretrained_samples.seed: the selection sees the evaluation's noise")
    score_fn = score_functions({score: {}})[score]
    sample = pipeline_sampler(
        base_model, num_inference_steps=config.sampler.num_inference_steps,
        guidance_scale=config.sampler.guidance_scale, eta=config.sampler.eta, device=config.device,
    )
    prompts = enumerate_prompts()
    seeds = derive_seeds(seed, num_seeds)
    plan = pd.DataFrame(
        [(p, parse_prompt(p).category, s) for p in prompts for s in seeds], columns=["prompt", "category", "seed"]
    )
    scores = np.empty(len(plan))
    for start in tqdm(range(0, len(plan), config.batch_size), desc="base model on candidates"):
        part = plan.iloc[start : start + config.batch_size]
        images = sample(part["prompt"].tolist(), part["seed"].tolist())
        scores[start : start + len(part)] = score_fn(images, part["prompt"].tolist())
    logger.info("Scored %d candidates × %d seeds with %s", len(prompts), num_seeds, score)
    return plan.assign(score=scores)


def select_prompts(scores: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The rule applied to the measured scores: the prompt file, the per-candidate rates, a summary."""
    rule = SelectPromptsConfig.from_dict(params).rule
    rates = solve_rates(scores, rule.solved_threshold)
    table, summary = select_headroom_prompts(rates, rule)
    for category in CATEGORIES:
        counts = summary["categories"].get(category, {})
        logger.info("%s: %s", category, counts)
    if summary["one_sided_categories"]:
        logger.warning("categories with a single qualifying prompt (train only): %s", summary["one_sided_categories"])
    if summary["train"]["prompts"] < 8 or summary["heldout"]["prompts"] < 8:
        logger.warning("fewer than 8 train or held-out prompts: %s / %s",
                       summary["train"]["prompts"], summary["heldout"]["prompts"])
    return table, rates, summary


def select_training_pool(rates: pd.DataFrame, shapeseval: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The default run's prompt file: ShapesEval's training pool, cut to the prompts the base model solves
    sometimes (``select_prompts.pool``); never a test prompt."""
    rule = SelectPromptsConfig.from_dict(params).pool
    table = select_pool_prompts(rates, check_split_table(shapeseval, f"{SPLIT_FILE} (catalog entry shapeseval_prompts)"), rule)
    logger.info("ShapesEval training pool with solve rate in [%g, %g]: %s", rule.min_solve_rate, rule.max_solve_rate,
                table.groupby(["split", "category"]).size().to_dict())
    return table

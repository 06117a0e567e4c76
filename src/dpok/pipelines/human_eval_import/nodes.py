"""A thin node over :mod:`dpok.evaluation.human_eval`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from dpok.evaluation import HumanEvalImportConfig, RatingsError, unblind, validate_ratings, win_rates

logger = logging.getLogger(__name__)


def import_ratings(
    human_eval_ratings: dict[str, Callable[[], pd.DataFrame]], human_eval_key: pd.DataFrame, params: dict[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Validate every ratings file against the key, unblind, and compute the win rates with CIs."""
    config = HumanEvalImportConfig.from_dict(params)
    if not human_eval_ratings:
        raise RatingsError("no ratings files found: put the raters' CSV files in data/01_raw/human_eval_ratings/")
    sources = {f"{name}.csv": load() for name, load in sorted(human_eval_ratings.items())}
    ratings = validate_ratings(sources, human_eval_key)
    answers = unblind(ratings, human_eval_key)
    results = win_rates(answers, confidence=config.confidence, method=config.ci_method)
    results.update({
        "sources": sorted(sources), "n_rows": int(len(ratings)), "n_raters": int(ratings["rater"].nunique()),
        "n_pairs_rated": int(ratings["pair_id"].nunique()), "n_pairs_exported": int(len(human_eval_key)),
    })
    metrics = {}
    for question, block in results["questions"].items():
        overall = block["all"]
        logger.info(
            "Human evaluation, %s: fine-tuned preferred in %s of %d decisive answers (%s ties)",
            question, "n/a" if overall["finetuned_win_rate"] is None else f"{overall['finetuned_win_rate']:.0%}",
            overall["finetuned_wins"] + overall["base_wins"], overall["ties"],
        )
        for stat in ("finetuned_win_rate", "ci_low", "ci_high", "tie_rate"):
            if overall[stat] is not None:
                metrics[f"human_eval.{question}.{stat}"] = {"value": float(overall[stat]), "step": 0}
    return results, answers, metrics

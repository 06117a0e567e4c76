"""Evaluation: scoring manifests, bootstrap CIs, grids and curves, human-evaluation export/import."""

from dpok.evaluation.config import EvaluateConfig, HumanEvalConfig, HumanEvalImportConfig, SamplingConfig
from dpok.evaluation.figures import curves_figure, figure_to_image, image_grid
from dpok.evaluation.history import learning_curves
from dpok.evaluation.human_eval import (
    RatingsError,
    blinded_images,
    build_pairs,
    render_page,
    unblind,
    validate_ratings,
    win_rates,
)
from dpok.evaluation.manifest import LazyScoredSamples, partition_id, sampling_plan, score_means
from dpok.evaluation.metrics import comparison_metrics, flat_metrics, pair_manifests, per_prompt_differences
from dpok.evaluation.report import (
    comparison_grid,
    markdown_text,
    metrics_table,
    render_report,
    select_grid_prompts,
)
from dpok.evaluation.seeds import derive_seeds
from dpok.evaluation.stats import Interval, binomial_ci, bootstrap_mean_ci, paired_difference_ci

__all__ = [
    "EvaluateConfig",
    "HumanEvalConfig",
    "HumanEvalImportConfig",
    "Interval",
    "LazyScoredSamples",
    "RatingsError",
    "SamplingConfig",
    "binomial_ci",
    "blinded_images",
    "bootstrap_mean_ci",
    "build_pairs",
    "comparison_grid",
    "comparison_metrics",
    "curves_figure",
    "derive_seeds",
    "figure_to_image",
    "flat_metrics",
    "image_grid",
    "learning_curves",
    "markdown_text",
    "metrics_table",
    "pair_manifests",
    "paired_difference_ci",
    "partition_id",
    "per_prompt_differences",
    "render_page",
    "render_report",
    "sampling_plan",
    "score_means",
    "select_grid_prompts",
    "unblind",
    "validate_ratings",
    "win_rates",
]

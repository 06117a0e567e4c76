"""ShapesEval scoring: the base and the fine-tuned model on the benchmark's test prompts, GenEval's way.

GenEval (Ghosh et al., 2023) reports, per category, the share of images its detector finds correct, and as
*overall* the mean of those category accuracies (each category weighs the same, however many prompts it
has). ShapesEval reports the same on the test prompts of :mod:`dpok.prompts.shapeseval`, an image being
correct when the exact judge gives it ``solved_threshold`` (1: every constraint met), plus the
image-weighted overall, the mean judge score and the quality score; for the base model, the fine-tuned
model and their paired difference (same prompt and seed, so the same initial noise), each with a
percentile-bootstrap CI that redraws images within prompts (:mod:`dpok.evaluation.stats`), per category and
per novelty and depth subset of the test prompts.

The overall accuracy's interval comes from the same bootstrap: weighting each image by
``N / (K · n_c)`` (N images, K categories, n_c images in its category) makes the image mean equal the mean
of the category means, and since a within-prompt resample keeps every category's image count, each
resampled weighted mean is the mean of the resampled category means.

``shapeseval.json`` (:func:`benchmark_metrics`)::

    {"benchmark": "ShapesEval", "scores": {"accuracy": ..., "shapes_judge": "reward", ...},
     "overall":        {"n", "n_prompts", "categories", "accuracy": {"base", "finetuned", "difference"}, ...},
     "image_weighted": {<as overall>},
     "per_category":   {"color": {<as overall>}, ...},
     "subsets":        {"novel_combination": {"description", <as overall>}, "objects_1": ..., ...}, ...}

each ``{"base" | "finetuned" | "difference"}`` being ``{"mean", "ci_low", "ci_high", "n"}``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from dpok.config import SamplerConfig, Settings, check_keys, from_mapping
from dpok.evaluation.config import SamplingConfig
from dpok.evaluation.figures import figure_to_image
from dpok.evaluation.manifest import LazyScoredSamples, SampleBatchFn, ScoreFn, sampling_plan
from dpok.evaluation.metrics import MODELS, pair_manifests, summarise_pairs
from dpok.evaluation.report import markdown_text
from dpok.evaluation.seeds import derive_seeds
from dpok.prompts.shapeseval import ShapesEvalSplit
from dpok.world.grammar import CATEGORIES

TAG_COLUMNS = ("novel_pair", "novel_combination", "objects")
CORRECT = "correct"
"""Per-image column stem: 1 where the solved score reaches the threshold (its mean is the accuracy)."""
ACCURACY = "accuracy"


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesEvalSampling(SamplingConfig):
    """How the test prompts are drawn and scored (``shapeseval.sampling``): the keys of
    :class:`~dpok.evaluation.SamplingConfig` (images per prompt, seed, sampler overrides, batch size, device,
    rewards, quality), validated by it, with errors naming ``shapeseval.sampling.*``."""

    KEY_PATH: ClassVar[str] = "shapeseval.sampling"


@dataclass(frozen=True)
class ShapesEvalConfig(Settings):
    """The benchmark (``parameters_shapeseval.yml``, key ``shapeseval``).

    Attributes:
        split: :class:`~dpok.prompts.shapeseval.ShapesEvalSplit`, how the grammar is split (the committed
            file is checked against it by the tests, not by the pipeline).
        sampling: :class:`ShapesEvalSampling`, with the shared ``sampler`` (built by :meth:`from_params`).
        solved_score: The reward an image is judged correct by; one of ``sampling.rewards``.
        solved_threshold: An image is correct when ``solved_score`` is at least this.
        bootstrap_resamples: Bootstrap resamples of every interval.
        bootstrap_seed: Seed of the bootstrap (the intervals are reproducible).
        confidence: Confidence level of every interval.
    """

    KEY_PATH: ClassVar[str] = "shapeseval"

    split: ShapesEvalSplit
    sampling: ShapesEvalSampling
    solved_score: str
    solved_threshold: float
    bootstrap_resamples: int
    bootstrap_seed: int
    confidence: float

    def __post_init__(self) -> None:
        if self.solved_score not in self.sampling.rewards:
            self.fail("solved_score", f"one of {self.sampling.key('rewards')} {list(self.sampling.rewards)}")
        self.number("solved_threshold")
        self.integer("bootstrap_resamples", 100)
        self.integer("bootstrap_seed", 0)
        self.number("confidence", gt=0, lt=1)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, sampler: Mapping[str, Any]) -> ShapesEvalConfig:
        """Build from the ``shapeseval`` and ``sampler`` parameters; unknown, missing and bad keys are errors
        naming them."""
        known = {"split", "sampling", "solved_score", "solved_threshold", "bootstrap_resamples", "bootstrap_seed",
                 "confidence"}
        params = check_keys(params, known, cls.KEY_PATH)
        sampling = ShapesEvalSampling.from_params(params.get("sampling"), sampler)
        return from_mapping(cls, params, cls.KEY_PATH, sampling=sampling)

    def score_kinds(self) -> dict[str, str]:
        return self.sampling.score_kinds()


# --- drawing and scoring -----------------------------------------------------------------------------


def score_images(
    plan: pd.DataFrame, sample_batch: SampleBatchFn, score_fns: Mapping[str, ScoreFn], batch_size: int,
    *, started: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Draw and score every image of ``plan`` batch by batch, keeping the scores and no image: the manifest
    (the plan plus one column per score) and the time split of :class:`LazyScoredSamples`."""
    samples = LazyScoredSamples(plan, sample_batch, score_fns, batch_size, started=started)
    for index in range(len(samples)):
        samples.image(index)  # the first image of a batch draws and scores the whole batch
    return samples.finish()


def score_model(
    pipeline, test_prompts: pd.DataFrame, sampling: SamplingConfig, score_fns: Mapping[str, ScoreFn],
    *, started: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every test prompt on ``sampling.images_per_prompt`` seeds derived from ``sampling.seed``, one torch
    generator per image (:func:`dpok.evaluation.sampling.pipeline_sampler`), so two models see the same noise."""
    from dpok.evaluation.sampling import pipeline_sampler

    started = time.perf_counter() if started is None else started
    plan = sampling_plan(test_prompts, derive_seeds(sampling.seed, sampling.images_per_prompt))
    sampler: SamplerConfig = sampling.sampler
    sample_batch = pipeline_sampler(pipeline, num_inference_steps=sampler.num_inference_steps,
                                    guidance_scale=sampler.guidance_scale, eta=sampler.eta, device=sampling.device)
    return score_images(plan, sample_batch, score_fns, sampling.batch_size, started=started)


def prompt_set_digest(prompts: pd.DataFrame) -> str:
    """SHA-256 (16 hex digits) of the sorted prompts: two runs' numbers compare only under equal digests."""
    return hashlib.sha256("\n".join(sorted(prompts["prompt"])).encode()).hexdigest()[:16]


# --- the comparison ----------------------------------------------------------------------------------


def paired_scores(
    base: pd.DataFrame, finetuned: pd.DataFrame, score_kinds: Mapping[str, str], solved_score: str,
    solved_threshold: float,
) -> pd.DataFrame:
    """One row per (prompt, seed): prompt, category, the tags, seed, ``correct_<model>`` (0/1) and
    ``<score>_<model>`` for both models (the per-image table ``shapeseval_scores.csv``)."""
    missing = [c for c in TAG_COLUMNS if c not in base.columns]
    if missing:
        raise ValueError(f"the base-model scores lack the ShapesEval tag column(s) {missing}")
    paired = pair_manifests(base, finetuned, list(score_kinds))
    tags = base.drop_duplicates("prompt").set_index("prompt")[list(TAG_COLUMNS)]
    paired = paired.join(tags, on="prompt")
    for model in MODELS:
        # The judge's scores are exact fractions; the tolerance only guards a float round-off below 1.
        paired[f"{CORRECT}_{model}"] = (paired[f"{solved_score}_{model}"] >= solved_threshold - 1e-9).astype(int)
    columns = ["prompt", "category", *TAG_COLUMNS, "seed", *(f"{CORRECT}_{m}" for m in MODELS),
               *(f"{score}_{m}" for score in score_kinds for m in MODELS)]
    return paired[columns].sort_values(["category", "prompt", "seed"], kind="stable", key=_category_order
                                       ).reset_index(drop=True)


def _category_order(column: pd.Series) -> pd.Series:
    if column.name != "category":
        return column
    return column.map({c: i for i, c in enumerate(CATEGORIES)}).fillna(len(CATEGORIES))


def category_weighted(paired: pd.DataFrame, scores: list[str]) -> pd.DataFrame:
    """``paired`` with every score column scaled by ``N / (K · n_c)``: its mean is the mean of the category
    means (GenEval's overall), and so is every within-prompt bootstrap resample's (module docstring)."""
    counts = paired["category"].map(paired["category"].value_counts())
    weights = len(paired) / (paired["category"].nunique() * counts)
    weighted = paired.copy()
    for score in scores:
        for model in MODELS:
            weighted[f"{score}_{model}"] = paired[f"{score}_{model}"] * weights
    return weighted


def subsets(paired: pd.DataFrame) -> dict[str, tuple[str, pd.Series]]:
    """``{key: (description, mask)}`` of the novelty and depth subsets that are neither empty nor everything."""
    composition = paired["category"] == "composition"
    candidates = {
        "novel_pair": ("a colour-shape pair no training-pool prompt has", paired["novel_pair"].astype(bool)),
        "seen_pairs": ("every colour-shape pair occurs in the training pool", ~paired["novel_pair"].astype(bool)),
        "novel_combination": ("composition, the two objects never together in the training pool",
                              paired["novel_combination"].astype(bool)),
        "seen_combination": ("composition, the same two objects in the other order in the training pool",
                             composition & ~paired["novel_combination"].astype(bool)),
    }
    for depth in sorted(paired["objects"].unique()):
        candidates[f"objects_{int(depth)}"] = (f"{int(depth)} object(s) per image", paired["objects"] == depth)
    return {key: (text, mask) for key, (text, mask) in candidates.items() if 0 < int(mask.sum()) < len(paired)}


def benchmark_metrics(
    paired: pd.DataFrame, score_kinds: Mapping[str, str], *, solved_score: str, solved_threshold: float,
    n_resamples: int, confidence: float, seed: int,
) -> dict[str, Any]:
    """``shapeseval.json``'s structure (module docstring) from :func:`paired_scores`'s table."""
    scores = [CORRECT, *score_kinds]
    kwargs = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)

    def block(group: pd.DataFrame, name: str) -> dict[str, Any]:
        summary = summarise_pairs(group, name, scores, **kwargs)
        summary[ACCURACY] = summary.pop(CORRECT)
        return {"n": summary.pop("n"), "n_prompts": summary.pop("n_prompts"),
                "categories": int(group["category"].nunique()), **summary}

    present = [c for c in CATEGORIES if (paired["category"] == c).any()]
    return {
        "benchmark": "ShapesEval",
        "scores": {ACCURACY: f"share of images with {solved_score} >= {solved_threshold}", **score_kinds},
        "solved_score": solved_score,
        "solved_threshold": solved_threshold,
        "confidence": confidence,
        "bootstrap_resamples": n_resamples,
        "bootstrap_seed": seed,
        "n_prompts": int(paired["prompt"].nunique()),
        "n_images": int(len(paired)),
        "overall": block(category_weighted(paired, scores), "overall: mean of the categories"),
        "image_weighted": block(paired, "overall: image-weighted"),
        "per_category": {c: block(paired[paired["category"] == c], f"category={c}") for c in present},
        "subsets": {key: {"description": text, **block(paired[mask], f"subset={key}")}
                    for key, (text, mask) in subsets(paired).items()},
    }


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "shapeseval") -> dict[str, float]:
    """MLflow metric names such as ``shapeseval.overall.accuracy.difference.mean``."""
    groups = {"overall": metrics["overall"], "image_weighted": metrics["image_weighted"],
              **{f"category.{k}": v for k, v in metrics["per_category"].items()},
              **{f"subset.{k}": v for k, v in metrics["subsets"].items()}}
    flat = {}
    for group, block in groups.items():
        for score in metrics["scores"]:
            for model in (*MODELS, "difference"):
                for stat in ("mean", "ci_low", "ci_high"):
                    value = block[score][model][stat]
                    if value is not None and np.isfinite(value):
                        flat[f"{prefix}.{group}.{score}.{model}.{stat}"] = float(value)
    return flat


# --- what people read --------------------------------------------------------------------------------


def _rows(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, block) in reading order: categories, the two overalls, the subsets."""
    rows = [(category, block) for category, block in metrics["per_category"].items()]
    rows += [("**overall** (mean of categories)", metrics["overall"]),
             ("overall (image-weighted)", metrics["image_weighted"])]
    rows += [(f"{key}: {block['description']}", block) for key, block in metrics["subsets"].items()]
    return rows


def _interval(entry: Mapping[str, Any], signed: bool = False) -> str:
    fmt = "+.3f" if signed else ".3f"
    return f"{entry['mean']:{fmt}} [{entry['ci_low']:{fmt}}, {entry['ci_high']:{fmt}}]"


def markdown_report(metrics: Mapping[str, Any], settings: Mapping[str, Any], timing: Mapping[str, Any]) -> str:
    """``shapeseval.md``: accuracy per category and overall, the mean scores, the settings and the time."""
    pct = f"{metrics['confidence']:.0%}"
    scores = [s for s in metrics["scores"] if s != ACCURACY]
    lines = [
        "# ShapesEval: base vs fine-tuned",
        "",
        f"{metrics['n_prompts']} test prompts × {settings['images_per_prompt']} seeds ({metrics['n_images']} image "
        f"pairs), the base model and the fine-tuned model drawn from the same noise (seed "
        f"{settings['seed']}, {settings['num_inference_steps']} DDIM steps, CFG {settings['guidance_scale']}, "
        f"η {settings['eta']}); test set {settings['test_set_sha256']}.",
        f"Accuracy: {markdown_text(metrics['scores'][ACCURACY])} (GenEval's per-image correctness). **Overall** is "
        "GenEval's: the mean of the category accuracies. Intervals: "
        f"{pct} percentile bootstrap ({metrics['bootstrap_resamples']} resamples, images redrawn within prompts); "
        "differences are paired (fine-tuned − base on the same prompt and seed).",
        "",
        "![Accuracy per category](shapeseval.png)",
        "",
        f"## Accuracy (mean [{pct} CI])",
        "",
        "| group | prompts | images | base | fine-tuned | difference |",
        "|---|---:|---:|---|---|---|",
    ]
    for label, block in _rows(metrics):
        acc = block[ACCURACY]
        lines.append(f"| {label} | {block['n_prompts']} | {block['n']} | {_interval(acc['base'])} | "
                     f"{_interval(acc['finetuned'])} | {_interval(acc['difference'], signed=True)} |")
    header = " | ".join(f"{markdown_text(s)} base | fine-tuned | difference" for s in scores)
    kinds = ", ".join(f"{markdown_text(s)}: {metrics['scores'][s]}" for s in scores)
    lines += ["", f"## Mean scores ({kinds}; differences with {pct} CI)", "",
              f"| group | {header} |", "|---|" + "---:|---:|---|" * len(scores)]
    for label, block in _rows(metrics):
        cells = []
        for score in scores:
            cells += [f"{block[score]['base']['mean']:.3f}", f"{block[score]['finetuned']['mean']:.3f}",
                      _interval(block[score]["difference"], signed=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Time: {timing['wall_seconds']:.0f} s from the base model's first image to these numbers "
        f"(base {timing['base']['sampling_seconds']:.0f} s sampling + {timing['base']['scoring_seconds']:.0f} s "
        f"scoring, fine-tuned {timing['finetuned']['sampling_seconds']:.0f} s + "
        f"{timing['finetuned']['scoring_seconds']:.0f} s).",
        "",
    ]
    return "\n".join(lines)


def accuracy_chart(metrics: Mapping[str, Any]) -> Image.Image:
    """Base vs fine-tuned accuracy per category and overall (mean of categories), each bar with its CI, and
    the paired difference with its CI written above each pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*metrics["per_category"].items(), ("overall", metrics["overall"])]
    x = np.arange(len(groups))
    width = 0.38
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 1.5, 3.8))
    for offset, model, label, colour in ((-width / 2, "base", "base", "#9e9e9e"),
                                         (width / 2, "finetuned", "fine-tuned", "#1f77b4")):
        entries = [block[ACCURACY][model] for _, block in groups]
        means = np.array([e["mean"] for e in entries])
        errors = np.array([[e["mean"] - e["ci_low"] for e in entries], [e["ci_high"] - e["mean"] for e in entries]])
        ax.bar(x + offset, means, width, yerr=np.clip(errors, 0, None), capsize=3, color=colour, label=label)
    for position, (_, block) in zip(x, groups):
        d = block[ACCURACY]["difference"]
        top = max(block[ACCURACY]["base"]["ci_high"], block[ACCURACY]["finetuned"]["ci_high"])
        ax.text(position, min(top + 0.03, 1.08), f"Δ {d['mean']:+.2f}\n[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [name if name != "overall" else "overall\n(mean of categories)" for name, _ in groups])
    ax.axvline(len(groups) - 1.5, color="black", lw=0.6, ls=":")
    ax.set_ylim(0, 1.25)  # room for the difference labels above bars near 1
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy (judge = 1)")
    pct = f"{metrics['confidence']:.0%}"
    ax.set_title(f"ShapesEval: {metrics['n_prompts']} test prompts, {metrics['n_images']} image pairs; {pct} CIs",
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_to_image(fig)


__all__ = [
    "ShapesEvalConfig",
    "ShapesEvalSampling",
    "accuracy_chart",
    "benchmark_metrics",
    "category_weighted",
    "flat_metrics",
    "markdown_report",
    "paired_scores",
    "score_images",
    "score_model",
    "subsets",
    "prompt_set_digest",
]

"""A benchmark probe during training: test-set accuracy against reward calls (the GenEval-vs-steps curve).

Every ``every_rounds`` rounds (and before the first and after the last) the trainer hands the policy to a
:class:`BenchmarkProbe`, which draws every benchmark prompt on a few fixed seeds (one torch generator per
image, the same noise at every probe, so consecutive points are paired) and scores them with the exact
judge: the accuracy (share of images with ``score >= solved_threshold``) per category and overall (the mean
of the category accuracies, as GenEval and :mod:`dpok.evaluation.shapeseval` report it), and the mean score.
It is cheap by design (a few seeds per prompt); the full ShapesEval run scores the final LoRA on 16.

The probe draws from its own generators, never from the trainer's random streams, so a run with and without
it trains the same LoRA (``tests/rl/test_probe.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dpok.config import SamplerConfig, Settings
from dpok.evaluation.manifest import sampling_plan
from dpok.evaluation.sampling import generate_seeded_images
from dpok.evaluation.seeds import derive_seeds

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ProbeConfig(Settings):
    """``finetune.probe`` (``parameters_finetune.yml``).

    Attributes:
        every_rounds: Probe after every this many rounds, and before the first and after the last; 0: never.
        images_per_prompt: Seeds per benchmark prompt (derived from ``seed``, the same at every probe).
        seed: Base seed of those seeds (give the probe noise of its own).
        score: The registered reward that judges an image (e.g. ``shapes_judge``).
        solved_threshold: An image is correct when ``score`` reaches this.
        batch_size: Images per pipeline call.
    """

    KEY_PATH: ClassVar[str] = "finetune.probe"

    every_rounds: int
    images_per_prompt: int
    seed: int
    score: str
    solved_threshold: float
    batch_size: int

    def __post_init__(self) -> None:
        self.integer("every_rounds", 0)
        self.integer("images_per_prompt", 1)
        self.integer("seed", 0)
        if not isinstance(self.score, str) or not self.score:
            self.fail("score", "a registered reward name, e.g. shapes_judge")
        self.number("solved_threshold")
        self.integer("batch_size", 1)

    @property
    def enabled(self) -> bool:
        return self.every_rounds > 0


def accuracy_summary(plan: pd.DataFrame, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """``accuracy`` (category mean), ``accuracy_<category>``, ``score_mean`` (category mean) and ``images``."""
    table = plan.assign(score=np.asarray(scores, dtype=np.float64))
    table["correct"] = (table["score"] >= threshold).astype(np.float64)
    by_category = table.groupby("category", sort=True)[["correct", "score"]].mean()
    summary = {"accuracy": float(by_category["correct"].mean()), "score_mean": float(by_category["score"].mean()),
               "images": float(len(table))}
    summary |= {f"accuracy_{category}": float(value) for category, value in by_category["correct"].items()}
    return summary


class BenchmarkProbe:
    """Scores a policy on fixed (prompt, seed) pairs; call it with the pipeline being trained.

    Args:
        prompts: The benchmark prompts (``prompt``, ``category``; other columns ignored).
        config: :class:`ProbeConfig`.
        sampler: The sampler the benchmark draws with (steps, guidance, η).
        score_fn: ``fn(uint8 images, prompts) -> scores`` (the reward named by ``config.score``).
    """

    def __init__(self, prompts: pd.DataFrame, config: ProbeConfig, sampler: SamplerConfig, score_fn) -> None:
        table = prompts[["prompt", "category"]].assign(split="probe")
        self.plan = sampling_plan(table, derive_seeds(config.seed, config.images_per_prompt))
        self.config = config
        self.sampler = sampler
        self.score_fn = score_fn

    @property
    def every_rounds(self) -> int:
        return self.config.every_rounds

    def __call__(self, pipeline) -> dict[str, float]:
        started = time.perf_counter()
        pipeline.set_progress_bar_config(disable=True)
        prompts, seeds = self.plan["prompt"].tolist(), self.plan["seed"].tolist()
        images = generate_seeded_images(
            pipeline, prompts, seeds, num_inference_steps=self.sampler.num_inference_steps,
            guidance_scale=self.sampler.guidance_scale, eta=self.sampler.eta, batch_size=self.config.batch_size,
        )
        scores = np.asarray(self.score_fn(images, prompts), dtype=np.float64)
        summary = accuracy_summary(self.plan, scores, self.config.solved_threshold)
        summary["seconds"] = time.perf_counter() - started
        return summary


def probe_table(probe_log: list[Mapping[str, Any]], trajectories_per_round: int) -> pd.DataFrame:
    """The probe's rows as a table: ``round``, ``reward_calls`` (trajectories sampled so far), then the metrics."""
    table = pd.DataFrame(list(probe_log))
    if table.empty:
        return pd.DataFrame(columns=["round", "reward_calls", "accuracy", "score_mean"])
    table.insert(1, "reward_calls", table["round"].astype(int) * int(trajectories_per_round))
    return table


__all__ = ["BenchmarkProbe", "ProbeConfig", "accuracy_summary", "probe_table"]

"""Typed, validated parameters of the evaluation pipelines (``pretrained_samples``, ``evaluate``, human
evaluation).

Each dataclass is built from its block of ``conf/base/parameters_pretrained_samples.yml`` (with the shared
``sampler`` of ``parameters_sampler.yml``) or ``parameters_evaluate.yml``, where its defaults live: unknown,
missing and bad keys are errors that name the key and say what is expected, raised before any model is
loaded (:mod:`dpok.config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dpok.config import SamplerConfig, Settings, fail, from_mapping, merged


def _score_spec(key: str, value: Any) -> dict[str, dict[str, Any]]:
    """``[name, ...]`` or ``{name: {factory options}}`` → ``{name: options}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        fail(key, "a list of reward names (e.g. [shapes_judge]), not a single string", value)
    if isinstance(value, Mapping):
        spec = {}
        for name, options in value.items():
            if not isinstance(name, str) or not name:
                fail(key, "a mapping of reward names to option mappings", value)
            if options is not None and not isinstance(options, Mapping):
                fail(f"{key}.{name}", "a mapping of reward options (or null)", options)
            spec[name] = dict(options or {})
        return spec
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) and v for v in value):
            fail(key, "a list of reward names", value)
        if len(set(value)) != len(value):
            fail(key, "a list without repeated names", value)
        return {v: {} for v in value}
    fail(key, "a list of reward names or a mapping name -> options", value)


DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class SamplingConfig(Settings):
    """How the evaluation images are drawn and scored (``parameters_pretrained_samples.yml``, key
    ``pretrained_samples``, with the shared ``sampler``).

    The ``evaluate`` pipeline reads the same blocks, so the fine-tuned model is sampled with exactly the
    settings, prompts and seeds of the base model; it refuses to run when the saved base-model samples
    were drawn with other settings.

    Attributes:
        images_per_prompt: N, images drawn per prompt (one seed each).
        seed: Base seed; the N seeds are :func:`dpok.evaluation.derive_seeds` ``(seed, N)``.
        sampler_overrides: Sampler settings (keys of ``sampler``) in which the evaluation differs from
            training; empty: it draws as DPOK's rounds do.
        batch_size: Images per pipeline call; scoring runs per batch and only one batch is held in
            memory. Each image has its own generator, so the batch size changes an image only by
            float32 summation order (at most one uint8 level); keep it equal between ``pretrained_samples``
            and ``evaluate`` runs for bit-identical noise paths.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``mps``.
        rewards: Reward names (``dpok.rewards`` registry) scored on every image; a list, or a mapping
            name -> factory options.
        quality: Quality-score names, scored and reported like the rewards but labelled ``quality``.
        sampler: The sampler the images are drawn with: the shared ``sampler`` block with
            ``sampler_overrides`` applied (built by :meth:`from_params`).
    """

    KEY_PATH: ClassVar[str] = "pretrained_samples"

    images_per_prompt: int
    seed: int
    sampler_overrides: dict[str, Any]
    batch_size: int
    device: str
    rewards: Any
    quality: Any
    sampler: SamplerConfig

    def __post_init__(self) -> None:
        self.integer("images_per_prompt", 1)
        self.integer("seed", 0)
        self.integer("batch_size", 1)
        self.choice("device", DEVICES)
        rewards = _score_spec(self.key("rewards"), self.rewards)
        quality = _score_spec(self.key("quality"), self.quality)
        both = sorted(set(rewards) & set(quality))
        if both:
            self.fail("quality", f"names not also listed under rewards ({both})")
        if not rewards and not quality:
            self.fail("rewards", "at least one reward or quality score to report")
        self.set("rewards", rewards)
        self.set("quality", quality)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, sampler: Mapping[str, Any]) -> SamplingConfig:
        """Build from the ``pretrained_samples`` and ``sampler`` parameters; unknown, missing and bad keys
        are errors naming them."""
        overrides = (params or {}).get("sampler_overrides") or {}
        block = f"{cls.KEY_PATH}.sampler_overrides"
        if not isinstance(overrides, Mapping):
            fail(block, "a mapping of sampler settings (e.g. {num_inference_steps: 40}) or {}", overrides)
        try:
            evaluation_sampler = from_mapping(SamplerConfig, merged(sampler, overrides), SamplerConfig.KEY_PATH)
        except ValueError as error:
            raise ValueError(f"{error} (the shared sampler with {block} {dict(overrides)} applied)") from None
        return from_mapping(cls, params, cls.KEY_PATH, sampler=evaluation_sampler)

    def score_kinds(self) -> dict[str, str]:
        """``{score name: "reward" | "quality"}`` in manifest column order."""
        return {**{n: "reward" for n in self.rewards}, **{n: "quality" for n in self.quality}}

    def sampler_settings(self) -> dict[str, Any]:
        """What decides the images: a base-model sample set is only comparable under equal settings."""
        return {
            "images_per_prompt": self.images_per_prompt,
            "seed": self.seed,
            "num_inference_steps": self.sampler.num_inference_steps,
            "guidance_scale": float(self.sampler.guidance_scale),
            "eta": float(self.sampler.eta),
        }


@dataclass(frozen=True)
class EvaluateConfig(Settings):
    """Statistics and figures of the ``evaluate`` pipeline (``parameters_evaluate.yml``, key ``evaluate``).

    Attributes:
        bootstrap_resamples: Bootstrap resamples for every mean and difference CI.
        bootstrap_seed: Seed of the bootstrap's numpy Generator (the CIs are reproducible).
        confidence: Confidence level of every interval (0.95 → 95 %).
        grid_max_prompts: Rows of the comparison grid (prompts, spread over splits and categories).
        grid_seeds: Seeds shown per prompt, each as a base | fine-tuned pair.
        grid_scale: Nearest-neighbour upscaling of the grid's images.
        report_top_prompts: Prompts listed in the report with the largest gain and the largest loss.
    """

    KEY_PATH: ClassVar[str] = "evaluate"

    bootstrap_resamples: int
    bootstrap_seed: int
    confidence: float
    grid_max_prompts: int
    grid_seeds: int
    grid_scale: int
    report_top_prompts: int

    def __post_init__(self) -> None:
        self.integer("bootstrap_resamples", 100)
        self.integer("bootstrap_seed", 0)
        self.number("confidence", gt=0, lt=1)
        self.integer("grid_max_prompts", 1)
        self.integer("grid_seeds", 1)
        self.integer("grid_scale", 1)
        self.integer("report_top_prompts", 0)



@dataclass(frozen=True)
class HumanEvalConfig(Settings):
    """The blinded pairwise export (``parameters_evaluate.yml``, key ``human_eval``).

    Attributes:
        seed: Seeds the choice of seeds per prompt, the left/right sides, the pair order and the opaque
            pair ids and file names. Recorded in the key file; change it for a real study so that
            nobody can regenerate the key from the public configuration.
        pairs_per_prompt: Pairs (base vs fine-tuned at one seed) per prompt; at most N.
        title: Heading of the rater's page.
    """

    KEY_PATH: ClassVar[str] = "human_eval"

    seed: int
    pairs_per_prompt: int
    title: str

    def __post_init__(self) -> None:
        self.integer("seed", 0)
        self.integer("pairs_per_prompt", 1)
        if not isinstance(self.title, str) or not self.title.strip():
            self.fail("title", "a non-empty string")



@dataclass(frozen=True)
class HumanEvalImportConfig(Settings):
    """Reading the raters' answers (``parameters_evaluate.yml``, key ``human_eval_import``).

    Attributes:
        confidence: Confidence level of the binomial CIs of the win rates.
        ci_method: ``wilson`` (Wilson score) or ``exact`` (Clopper–Pearson), as scipy's ``binomtest``.
    """

    KEY_PATH: ClassVar[str] = "human_eval_import"

    confidence: float
    ci_method: str

    def __post_init__(self) -> None:
        self.number("confidence", gt=0, lt=1)
        self.choice("ci_method", ("wilson", "exact"))


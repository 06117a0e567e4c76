"""Typed, validated parameters of the evaluation pipelines (``pretrained``, ``evaluate``, human evaluation).

Each dataclass is built from its block of ``conf/base/parameters_pretrained.yml`` or
``parameters_evaluate.yml`` with ``from_dict``: unknown keys and bad values are errors that name the
key and say what is expected, raised before any model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from dpok.config import from_mapping


def _fail(block: str, name: str, requirement: str, value: Any) -> ValueError:
    return ValueError(f"{block}.{name} must be {requirement}, got {value!r}")


def _integer(block: str, obj: Any, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(block, name, f"an integer >= {minimum}", value)


def _number(block: str, obj: Any, name: str, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None) -> None:
    value = getattr(obj, name)
    bounds = [(gt, ">"), (ge, ">="), (lt, "<")]
    requirement = "a number " + " and ".join(f"{op} {b}" for b, op in bounds if b is not None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(block, name, requirement, value)
    too_low = (gt is not None and not value > gt) or (ge is not None and not value >= ge)
    if too_low or (lt is not None and not value < lt):
        raise _fail(block, name, requirement, value)


def _score_spec(block: str, name: str, value: Any) -> dict[str, dict[str, Any]]:
    """``[name, ...]`` or ``{name: {factory options}}`` → ``{name: options}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        raise _fail(block, name, "a list of reward names (e.g. [shapes_judge]), not a single string", value)
    if isinstance(value, Mapping):
        spec = {}
        for key, options in value.items():
            if not isinstance(key, str) or not key:
                raise _fail(block, name, "a mapping of reward names to option mappings", value)
            if options is not None and not isinstance(options, Mapping):
                raise _fail(block, f"{name}.{key}", "a mapping of reward options (or null)", options)
            spec[key] = dict(options or {})
        return spec
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) and v for v in value):
            raise _fail(block, name, "a list of reward names", value)
        if len(set(value)) != len(value):
            raise _fail(block, name, "a list without repeated names", value)
        return {v: {} for v in value}
    raise _fail(block, name, "a list of reward names or a mapping name -> options", value)


DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class SamplingConfig:
    """How the evaluation images are drawn and scored (``parameters_pretrained.yml``, key ``pretrained``).

    The ``evaluate`` pipeline reads the same block, so the fine-tuned model is sampled with exactly the
    settings, prompts and seeds of the base model; it refuses to run when the saved base-model samples
    were drawn with other settings.

    Attributes:
        images_per_prompt: N, images drawn per prompt (one seed each).
        seed: Base seed; the N seeds are :func:`dpok.evaluation.derive_seeds` ``(seed, N)``.
        num_inference_steps: DDIM steps.
        guidance_scale: Classifier-free guidance weight.
        eta: DDIM η (1.0 is the stochastic sampler DPOK fine-tunes).
        batch_size: Images per pipeline call; scoring runs per batch and only one batch is held in
            memory. Each image has its own generator, so the batch size changes an image only by
            float32 summation order (at most one uint8 level); keep it equal between ``pretrained``
            and ``evaluate`` runs for bit-identical noise paths.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``mps``.
        rewards: Reward names (``dpok.rewards`` registry) scored on every image; a list, or a mapping
            name -> factory options.
        quality: Quality-score names, scored and reported like the rewards but labelled ``quality``.
    """

    images_per_prompt: int = 16
    seed: int = 0
    num_inference_steps: int = 20
    guidance_scale: float = 3.0
    eta: float = 1.0
    batch_size: int = 64
    device: str = "auto"
    rewards: Any = field(default_factory=lambda: ["shapes_judge"])
    quality: Any = field(default_factory=lambda: ["shapes_quality"])

    def __post_init__(self) -> None:
        block = "pretrained"
        _integer(block, self, "images_per_prompt", 1)
        _integer(block, self, "seed", 0)
        _integer(block, self, "num_inference_steps", 1)
        _integer(block, self, "batch_size", 1)
        _number(block, self, "guidance_scale", ge=0)
        _number(block, self, "eta", ge=0)
        if self.eta > 1:
            raise _fail(block, "eta", "a number in [0, 1]", self.eta)
        if self.device not in DEVICES:
            raise _fail(block, "device", f"one of {list(DEVICES)}", self.device)
        rewards = _score_spec(block, "rewards", self.rewards)
        quality = _score_spec(block, "quality", self.quality)
        both = sorted(set(rewards) & set(quality))
        if both:
            raise _fail(block, "quality", f"names not also listed under rewards ({both})", self.quality)
        if not rewards and not quality:
            raise _fail(block, "rewards", "at least one reward or quality score to report", self.rewards)
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "quality", quality)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> SamplingConfig:
        return from_mapping(cls, params, "pretrained")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def score_kinds(self) -> dict[str, str]:
        """``{score name: "reward" | "quality"}`` in manifest column order."""
        return {**{n: "reward" for n in self.rewards}, **{n: "quality" for n in self.quality}}

    def sampler_settings(self) -> dict[str, Any]:
        """What decides the images: a base-model sample set is only comparable under equal settings."""
        return {
            "images_per_prompt": self.images_per_prompt,
            "seed": self.seed,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": float(self.guidance_scale),
            "eta": float(self.eta),
        }


@dataclass(frozen=True)
class EvaluateConfig:
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

    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    grid_max_prompts: int = 16
    grid_seeds: int = 4
    grid_scale: int = 3
    report_top_prompts: int = 5

    def __post_init__(self) -> None:
        block = "evaluate"
        _integer(block, self, "bootstrap_resamples", 100)
        _integer(block, self, "bootstrap_seed", 0)
        _number(block, self, "confidence", gt=0, lt=1)
        _integer(block, self, "grid_max_prompts", 1)
        _integer(block, self, "grid_seeds", 1)
        _integer(block, self, "grid_scale", 1)
        _integer(block, self, "report_top_prompts", 0)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> EvaluateConfig:
        return from_mapping(cls, params, "evaluate")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HumanEvalConfig:
    """The blinded pairwise export (``parameters_evaluate.yml``, key ``human_eval``).

    Attributes:
        seed: Seeds the choice of seeds per prompt, the left/right sides, the pair order and the opaque
            pair ids and file names. Recorded in the key file; change it for a real study so that
            nobody can regenerate the key from the public configuration.
        pairs_per_prompt: Pairs (base vs fine-tuned at one seed) per prompt; at most N.
        title: Heading of the rater's page.
    """

    seed: int = 0
    pairs_per_prompt: int = 2
    title: str = "Which image is better?"

    def __post_init__(self) -> None:
        _integer("human_eval", self, "seed", 0)
        _integer("human_eval", self, "pairs_per_prompt", 1)
        if not isinstance(self.title, str) or not self.title.strip():
            raise _fail("human_eval", "title", "a non-empty string", self.title)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> HumanEvalConfig:
        return from_mapping(cls, params, "human_eval")


@dataclass(frozen=True)
class HumanEvalImportConfig:
    """Reading the raters' answers (``parameters_evaluate.yml``, key ``human_eval_import``).

    Attributes:
        confidence: Confidence level of the binomial CIs of the win rates.
        ci_method: ``wilson`` (Wilson score) or ``exact`` (Clopper–Pearson), as scipy's ``binomtest``.
    """

    confidence: float = 0.95
    ci_method: str = "wilson"

    def __post_init__(self) -> None:
        _number("human_eval_import", self, "confidence", gt=0, lt=1)
        if self.ci_method not in ("wilson", "exact"):
            raise _fail("human_eval_import", "ci_method", "'wilson' or 'exact'", self.ci_method)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> HumanEvalImportConfig:
        return from_mapping(cls, params, "human_eval_import")

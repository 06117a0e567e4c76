"""A diffusers pipeline as the ``fn(prompts, seeds) -> uint8 images`` that :class:`LazyScoredSamples` calls."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from dpok.devices import resolve_device
from dpok.evaluation.manifest import SampleBatchFn, ScoreFn
from dpok.evaluation.sampling import iter_seeded_images


def pipeline_sampler(
    pipeline: StableDiffusionPipeline,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    eta: float,
    device: str = "auto",
) -> SampleBatchFn:
    """Draw one batch with :func:`iter_seeded_images` (one CPU generator per image, so an image depends
    only on its prompt and seed, on any device and at any batch size)."""
    pipeline.to(resolve_device(device))
    pipeline.set_progress_bar_config(disable=True)

    def sample_batch(prompts: list[str], seeds: list[int]):
        (_, images), = iter_seeded_images(
            pipeline, prompts, seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            eta=eta, batch_size=len(prompts),
        )
        return images

    return sample_batch


def score_functions(score_options: dict[str, dict]) -> dict[str, ScoreFn]:
    """``{name: reward fn}`` from ``{name: factory options}`` through the :mod:`dpok.rewards` registry
    (unknown names fail here, before any image is drawn, with the list of known ones)."""
    from dpok.rewards import get_reward_fn

    return {name: get_reward_fn(name, **options) for name, options in score_options.items()}

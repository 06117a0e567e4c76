"""A run's setup (docs/algorithm.md §4): the checks of its inputs, the pipeline's preparation, and the
:class:`RoundContext` that every phase of a round reads.

The policy and the reference model are the same UNet: the reference is the UNet with its LoRA adapter
disabled. The UNet stays in eval mode (no dropout), only the LoRA weights train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from dpok.models.lora import ADAPTER_NAME
from dpok.rl.config import FinetuneConfig
from dpok.rl.distributed import Ranks
from dpok.rl.precision import RunPrecision, compiled, resolve_precision
from dpok.rl.sampling import validate_scheduler_for_logprob

logger = logging.getLogger(__name__)

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]


@dataclass(frozen=True, eq=False)
class RoundContext:
    """What every phase of a round reads and none changes, built once per run (what changes is the
    :class:`~dpok.rl.state.RunState`).

    Attributes:
        pipeline: The diffusers pipeline; its UNet carries the trained LoRA adapter.
        prompts: The training prompts, checked.
        reward_fn: ``reward_fn(images_uint8_NHWC, prompts) -> rewards``.
        config: The run's settings.
        ranks: The processes sharing the run (one, by default).
        step_weights: The surrogate's weight of each step of the schedule, (T,)
            (:func:`dpok.rl.update.step_weights`).
    """

    pipeline: Any
    prompts: list[str]
    reward_fn: RewardFn
    config: FinetuneConfig
    ranks: Ranks
    step_weights: torch.Tensor

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    @cached_property
    def precision(self) -> RunPrecision:
        """``runtime.precision`` and ``runtime.compile`` resolved for this machine (checked at start-up by
        :func:`prepare_pipeline`)."""
        return run_precision_of(self.pipeline, self.config)

    @cached_property
    def diffusion_unet(self) -> torch.nn.Module:
        """The UNet as sampling and the update call it: compiled where ``runtime.compile`` resolves to true."""
        return compiled(self.unet, self.precision)

    @property
    def call_rows(self) -> int | None:
        """Latents per UNet call in sampling and the update (:func:`dpok.rl.sampling.guided_noise_prediction`):
        the sampler's chunk outside float32 eager, so that both run the same shapes; None in float32 eager."""
        return self.config.sample_chunk(self.ranks.world_size) if self.precision.fixed_call_shape else None


def check_inputs(pipeline, prompts: Sequence[str], config: FinetuneConfig) -> list[str]:
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of prompt strings")
    prompts = list(prompts)
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"prompts must be non-empty strings, got {bad[:3]}")
    validate_scheduler_for_logprob(pipeline.scheduler, config.sampler.num_inference_steps, config.sampler.eta)
    if ADAPTER_NAME in (getattr(pipeline.unet, "peft_config", None) or {}):
        raise ValueError(
            f"the pipeline's UNet already has a '{ADAPTER_NAME}' LoRA adapter; pass a pipeline without it "
            "(to continue a run, resume from its checkpoint folder)"
        )
    return prompts


def run_precision_of(pipeline, config: FinetuneConfig) -> RunPrecision:
    """:func:`dpok.rl.precision.resolve_precision` for ``pipeline``'s UNet (its device and weights' dtype)."""
    return resolve_precision(config.runtime, pipeline.unet.device, pipeline.unet.dtype)


def prepare_pipeline(pipeline, config: FinetuneConfig) -> RunPrecision:
    """Freeze the pipeline and check the run's precision against the machine (an error at start-up, naming the
    key, rather than a slow path or a failure mid-run); returns it."""
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
        module.eval()
    precision = run_precision_of(pipeline, config)
    logger.info("%s", precision.reason)
    if precision.warning:
        logger.warning("%s", precision.warning)
    if pipeline.unet.dtype == torch.float16 and not precision.loss_scaling:
        logger.warning(
            "the UNet is float16 and finetune.rl.runtime.precision is %r: gradients pass through float16 "
            "activations without loss scaling and may underflow; precision: fp16 adds the scaling",
            precision.name,
        )
    return precision


__all__ = ["RewardFn", "RoundContext", "check_inputs", "prepare_pipeline", "run_precision_of"]

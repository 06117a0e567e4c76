"""A run's setup (docs/algorithm.md §4): the checks of its inputs, the pipeline's preparation, and the
:class:`RoundContext` that every phase of a round reads.

The policy and the reference model are the same UNet: the reference is the UNet with its LoRA adapter
disabled. The UNet stays in eval mode (no dropout), only the LoRA weights train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dpok.models.lora import ADAPTER_NAME
from dpok.rl.config import FinetuneConfig
from dpok.rl.distributed import Ranks
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


def prepare_pipeline(pipeline, config: FinetuneConfig) -> None:
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
        module.eval()
    if pipeline.unet.dtype == torch.float16 and config.runtime.mixed_precision != "fp16":
        logger.warning(
            "the UNet is float16 and finetune.rl.runtime.mixed_precision is %r: gradients pass through float16 "
            "activations without loss scaling and may underflow; mixed_precision: fp16 adds the scaling",
            config.runtime.mixed_precision,
        )


__all__ = ["RewardFn", "RoundContext", "check_inputs", "prepare_pipeline"]

"""A round's rollouts (docs/algorithm.md §4, steps 1–2): its prompts, their trajectories sampled with the
current policy, and their rewards; with the random streams and the precision they are drawn in.

Randomness: every random draw of round ``k`` comes from generators seeded by ``(seed, k, stream)``
(prompt choice, each trajectory's noise, value minibatches, policy minibatches), and the LoRA and value
net are initialised from ``(seed, stream)``. A round therefore depends only on the state at its start
(LoRA, optimisers, value net, buffer, reward statistics), which the checkpoint holds, so a resumed run
repeats the uninterrupted run exactly. The global RNG states are saved and restored too, for a reward
function that uses them.

Precision: ``config.runtime.precision`` applies to the diffusion model's passes only (sampling, the KL report,
the policy steps; fp16 adds loss scaling; :mod:`dpok.rl.precision`); the LoRA weights and their optimiser, the
value function and the reward stay float32, whatever the pipeline's dtype.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from dpok.rl.config import FinetuneConfig
from dpok.rl.context import RewardFn, RoundContext
from dpok.rl.distributed import Ranks
from dpok.rl.precision import diffusion_passes, resolve_precision
from dpok.rl.sampling import Trajectory, sample_trajectories

# Random streams of a round (see module docstring).
(
    PROMPT_STREAM, SAMPLING_STREAM, VALUE_STREAM, POLICY_STREAM, LORA_INIT_STREAM, VALUE_INIT_STREAM,
    INITIAL_NOISE_STREAM,
) = range(7)

def diffusion_autocast(config: FinetuneConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast in ``config.runtime.precision`` for a float32 UNet's passes on ``device``; a no-op in fp32.
    (train_dpok instead holds the weights in the half dtype where that is faster: :func:`diffusion_passes`.)"""
    dtype = resolve_precision(config.runtime, torch.device(device), torch.float32).dtype
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def stream_seed(seed: int, *key: int) -> int:
    """A 64-bit seed derived from ``(seed, *key)``: independent, reproducible streams."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=key).generate_state(1, dtype=np.uint64)[0])


def stream_generator(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, *key))


def draw_prompts(prompts: list[str], config: FinetuneConfig, round_number: int) -> tuple[list[str], list[int]]:
    """The round's prompts, ``rollout.trajectories_per_prompt`` in a row per draw, and each one's group index."""
    n_groups = config.rollout.g_batch // config.rollout.trajectories_per_prompt
    choice = torch.randint(
        len(prompts), (n_groups,), generator=stream_generator(config.seed, round_number, PROMPT_STREAM)
    )
    repeat = config.rollout.trajectories_per_prompt
    return [prompts[i] for i in choice.tolist() for _ in range(repeat)], [g for g in range(n_groups) for _ in range(repeat)]


def _initial_noise(unet, config: FinetuneConfig, round_number: int, groups: list[int]) -> torch.Tensor | None:
    """With ``rollout.share_initial_noise``, one x_T per group from its own stream; otherwise None (each trajectory
    draws x_T from its own sampling stream, as the stock pipeline does)."""
    if not config.rollout.share_initial_noise:
        return None
    size = unet.config.sample_size
    shape = (1, unet.config.in_channels, size, size)
    per_group = {
        g: randn_tensor(
            shape, generator=stream_generator(config.seed, round_number, INITIAL_NOISE_STREAM, g), dtype=torch.float32
        )
        for g in sorted(set(groups))
    }
    return torch.cat([per_group[g] for g in groups])


def sample_round(
    pipeline, prompts: list[str], groups: list[int], config: FinetuneConfig, round_number: int,
    ranks: Ranks = Ranks(), call_rows: int | None = None, unet: torch.nn.Module | None = None,
) -> Trajectory:
    """The round's trajectories in chunks of ``runtime.sample_batch_size``; each rank samples its chunks (trajectory
    i from stream i) and all get all. ``call_rows`` and ``unet`` (a compiled UNet): see
    :func:`~dpok.rl.sampling.sample_trajectories`."""
    initial = _initial_noise(pipeline.unet, config, round_number, groups)
    parts = [
        sample_trajectories(
            pipeline,
            prompts[chunk.start : chunk.stop],
            num_inference_steps=config.sampler.num_inference_steps,
            guidance_scale=config.sampler.guidance_scale,
            eta=config.sampler.eta,
            generator=[stream_generator(config.seed, round_number, SAMPLING_STREAM, i) for i in chunk],
            latents=None if initial is None else initial[chunk.start : chunk.stop],
            call_rows=call_rows,
            unet=unet,
        )
        for chunk in ranks.chunks(len(prompts), config.sample_chunk(ranks.world_size))
    ]
    if not ranks.distributed:
        return Trajectory.concatenate(parts)
    local = [Trajectory.concatenate(parts).to("cpu")] if parts else []
    return Trajectory.concatenate(ranks.gather(local)).to(pipeline.unet.device)


def rollout(context: RoundContext, round_number: int) -> tuple[list[str], list[int], Trajectory]:
    """Step 1: the round's prompts, their group indices, and their trajectories from the current policy
    (no grad)."""
    config = context.config
    round_prompts, groups = draw_prompts(context.prompts, config, round_number)
    with diffusion_passes(context.unet, context.precision):
        trajectory = sample_round(context.pipeline, round_prompts, groups, config, round_number, context.ranks,
                                  context.call_rows, context.diffusion_unet)
    return round_prompts, groups, trajectory


def score(reward_fn: RewardFn, images: np.ndarray, prompts: list[str], round_number: int) -> np.ndarray:
    raw = reward_fn(images, list(prompts))
    rewards = np.asarray(raw, dtype=np.float64)
    if rewards.shape != (len(prompts),):
        raise ValueError(
            f"reward_fn returned an array of shape {rewards.shape} for {len(prompts)} images in round "
            f"{round_number}; it must return one reward per image, shape ({len(prompts)},)"
        )
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"reward_fn returned a non-finite reward ({rewards[i]}) for prompt {prompts[i]!r} (image {i} of "
            f"round {round_number}; {bad.size} of {len(prompts)} non-finite). Rewards must be finite numbers"
        )
    return rewards


def score_shared(context: RoundContext, images: np.ndarray, prompts: list[str], round_number: int) -> np.ndarray:
    """Step 2: :func:`score` with each rank scoring its chunk of the images; every rank gets all rewards."""
    ranks = context.ranks
    local = [score(context.reward_fn, images[chunk.start : chunk.stop], prompts[chunk.start : chunk.stop], round_number)
             for chunk in ranks.chunks(len(prompts))]
    return np.concatenate(ranks.gather(local))


__all__ = [
    "INITIAL_NOISE_STREAM", "LORA_INIT_STREAM", "POLICY_STREAM", "PROMPT_STREAM", "SAMPLING_STREAM",
    "VALUE_INIT_STREAM", "VALUE_STREAM", "diffusion_autocast", "draw_prompts", "rollout", "sample_round", "score",
    "score_shared", "stream_generator", "stream_seed",
]

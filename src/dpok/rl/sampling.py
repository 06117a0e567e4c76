"""The stochastic DDIM sampler as a policy: one step with its log-probability, and whole trajectories.

docs/algorithm.md §2. A denoising step is the Gaussian ``p_θ(x_{t−1} | x_t, z) = N(μ_θ, σ_t² I)`` with

    x̂_0 = (x_t − sqrt(1 − ᾱ_t) · ε̄) / sqrt(ᾱ_t)
    σ_t = η · sqrt((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) · sqrt(1 − ᾱ_t / ᾱ_{t−1})
    μ   = sqrt(ᾱ_{t−1}) · x̂_0 + sqrt(1 − ᾱ_{t−1} − σ_t²) · ε̄

computed in the same order of operations as diffusers' ``DDIMScheduler.step`` so that, for the same
noise, the sample is the one diffusers produces. The log-probability is averaged over the latent's
elements (as in the official code and DDPO), so a ratio-clip width like 1e-4 is meaningful.

σ_t = 0 steps have no density. We refuse them rather than leaving them out of the loss:
:func:`validate_scheduler_for_logprob` checks every step of a schedule before sampling, and the step
itself raises if it meets one (e.g. ``set_alpha_to_one=True`` makes the last step deterministic; use
Stable Diffusion's ``set_alpha_to_one=False, steps_offset=1``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from dpok.images import images_to_uint8

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")

Generator = torch.Generator | list[torch.Generator] | None


def _check_scheduler_config(scheduler: DDIMScheduler) -> None:
    """Refuse configurations under which the step is not the Gaussian of docs/algorithm.md §2."""
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(
            f"DPOK's log-probabilities are those of the DDIM sampler; got a {type(scheduler).__name__}. "
            "Use DDIMScheduler.from_config(pipeline.scheduler.config)"
        )
    config = scheduler.config
    if config.clip_sample:
        raise ValueError(
            "scheduler.config.clip_sample=True clips x̂_0, so the step is no longer Gaussian in ε̄ and its "
            "log-probability would be wrong; set clip_sample=False (Stable Diffusion's setting)"
        )
    if config.thresholding:
        raise ValueError(
            "scheduler.config.thresholding=True (dynamic thresholding of x̂_0) makes the step non-Gaussian; "
            "set thresholding=False"
        )
    if config.prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise ValueError(
            f"scheduler.config.prediction_type={config.prediction_type!r} is not supported; "
            f"use one of {SUPPORTED_PREDICTION_TYPES}"
        )


def _alpha_products(
    scheduler: DDIMScheduler, timestep: int | torch.Tensor, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ_t and ᾱ_{t−1}: 0-d tensors for a scalar timestep (exactly diffusers' arithmetic), else shaped
    (B, 1, ..., 1) to broadcast against ``sample``.

    ᾱ_{t−1} follows diffusers: the previous timestep is ``t − num_train_timesteps // num_inference_steps``
    and the scheduler's ``final_alpha_cumprod`` where that is negative.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("scheduler.num_inference_steps is None: call scheduler.set_timesteps(n) first")
    alphas_cumprod = scheduler.alphas_cumprod
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    if not isinstance(timestep, torch.Tensor) or timestep.ndim == 0:
        t = int(timestep)
        alpha_prev = alphas_cumprod[t - stride] if t - stride >= 0 else scheduler.final_alpha_cumprod
        return alphas_cumprod[t], alpha_prev
    t = timestep.to(alphas_cumprod.device).long().reshape(-1)
    prev_t = t - stride
    final = scheduler.final_alpha_cumprod.to(alphas_cumprod)
    alpha_prev = torch.where(prev_t >= 0, alphas_cumprod[prev_t.clamp(min=0)], final)
    shape = (-1,) + (1,) * (sample.ndim - 1)
    pair = torch.stack([alphas_cumprod[t], alpha_prev]).to(sample.device)
    return pair[0].reshape(shape), pair[1].reshape(shape)


def _original_and_epsilon(scheduler, model_output, sample, alpha_t) -> tuple[torch.Tensor, torch.Tensor]:
    beta_t = 1 - alpha_t
    if scheduler.config.prediction_type == "epsilon":
        return (sample - beta_t**0.5 * model_output) / alpha_t**0.5, model_output
    # v_prediction
    return alpha_t**0.5 * sample - beta_t**0.5 * model_output, alpha_t**0.5 * model_output + beta_t**0.5 * sample


def predicted_original_sample(
    scheduler: DDIMScheduler, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """Tweedie's estimate x̂_0 of the final latent from ``x_t`` and the model's prediction (float32)."""
    _check_scheduler_config(scheduler)
    model_output, sample = model_output.float(), sample.float()
    alpha_t, _ = _alpha_products(scheduler, timestep, sample)
    return _original_and_epsilon(scheduler, model_output, sample, alpha_t)[0]


def policy_gradient_scale(scheduler: DDIMScheduler, timesteps: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """|c_t|/σ_t of each step, shape (T,): how strongly the step's log-probability reacts to the model.

    μ_θ is affine in the model's prediction with slope c_t (docs/algorithm.md §3), and
    ∇_θ log p_θ(x_{t−1}|x_t) = (x_{t−1} − μ_θ)/σ_t² · c_t · ∇_θ ε̄ = (noise/σ_t) · c_t · ∇_θ ε̄, so a step's
    policy-gradient term scales with |c_t|/σ_t. The slope is read off the step itself (μ at ε̄ = 1 minus
    μ at ε̄ = 0), so it holds for ε- and v-prediction alike.
    """
    timesteps = torch.as_tensor(timesteps).reshape(-1)
    zeros = torch.zeros(timesteps.shape[0], 1)
    mean_at_zero, std = ddim_step_mean_std(scheduler, zeros, timesteps, zeros, eta)
    mean_at_one, _ = ddim_step_mean_std(scheduler, torch.ones_like(zeros), timesteps, zeros, eta)
    return ((mean_at_one - mean_at_zero).abs() / std).reshape(-1)


def ddim_step_mean_std(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ and standard deviation σ_t of the DDIM step ``x_t → x_{t−1}`` (docs/algorithm.md §2).

    ``timestep`` is a scalar or a tensor of shape (B,). Returns ``mean`` shaped like ``sample`` and
    ``std`` broadcastable against it: shape (B, 1, ..., 1) for batched timesteps, a 0-d tensor otherwise.
    The arithmetic is float32 whatever the inputs' dtype. In half precision the sampler (a scalar
    timestep, whose 0-d ᾱ does not promote) and the update (batched timesteps, whose (B, 1, 1, 1) ᾱ
    does) would otherwise compute μ in different dtypes: on a tiny fp16 model that alone made
    |log ρ| ≈ 3e-3 for an unchanged policy (2e-2 in bf16), 30 times the paper's 1e-4 ratio clip.
    """
    _check_scheduler_config(scheduler)
    model_output, sample = model_output.float(), sample.float()
    alpha_t, alpha_prev = _alpha_products(scheduler, timestep, sample)
    beta_t = 1 - alpha_t
    pred_original_sample, pred_epsilon = _original_and_epsilon(scheduler, model_output, sample, alpha_t)
    variance = ((1 - alpha_prev) / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance**0.5
    # clamp: rounding can make 1 − ᾱ_{t−1} − σ_t² a hair below zero at η = 1, which would give NaN
    direction = (1 - alpha_prev - std**2).clamp(min=0) ** 0.5 * pred_epsilon
    mean = alpha_prev**0.5 * pred_original_sample + direction
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²) per element, averaged over all but the batch dimension (float32)."""
    x, mean, std = x.float(), mean.float(), std.float()
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, log_density.ndim)))


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: Generator = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step: draw ``x_{t−1}`` (or take ``prev_sample``) and return it, in float32, with its
    log-probability.

    The log-probability is that of ``N(μ_θ, σ_t² I)`` averaged over the non-batch dimensions, shape (B,).
    Noise is drawn as diffusers draws it (``randn_tensor(model_output.shape, generator=...)``), so with the
    same generator the sample equals ``DDIMScheduler.step(..., eta=eta, generator=...)``.
    Raises ``ValueError`` for σ_t = 0 steps, which have no density.
    """
    mean, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
    if not bool(torch.all(std > 0)):
        raise ValueError(
            f"σ_t = 0 at timestep {timestep} (eta={eta}): the step is deterministic and has no "
            "log-probability. Use eta > 0 and a scheduler with set_alpha_to_one=False "
            "(see validate_scheduler_for_logprob)"
        )
    if prev_sample is None:
        # drawn in the model's dtype, as diffusers draws it, so a generator gives the same noise
        noise = randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        prev_sample = mean + std * noise.float()
    prev_sample = prev_sample.float()
    return prev_sample, gaussian_log_prob(prev_sample, mean, std)


def validate_scheduler_for_logprob(scheduler: DDIMScheduler, num_inference_steps: int, eta: float = 1.0) -> None:
    """Raise ``ValueError`` unless every step of the ``num_inference_steps`` schedule has a density.

    Checks the configuration (DDIM, no clipping or thresholding, ε- or v-prediction), η > 0, and that
    ᾱ_t > 0 and σ_t > 0 at every step, without changing ``scheduler``.
    """
    _check_scheduler_config(scheduler)
    if not eta > 0:
        raise ValueError(f"eta must be > 0 for the DDIM step to be stochastic, got {eta}")
    probe = copy.copy(scheduler)  # set_timesteps rebinds attributes only: the caller's scheduler is untouched
    probe.set_timesteps(num_inference_steps)
    timesteps = probe.timesteps
    alpha_t, alpha_prev = _alpha_products(probe, timesteps, timesteps.reshape(-1, 1))
    sigma = (((1 - alpha_prev) / (1 - alpha_t)) * (1 - alpha_t / alpha_prev)).clamp(min=0).sqrt().reshape(-1)
    if bool(torch.all(alpha_t > 0)) and bool(torch.all(torch.isfinite(sigma) & (sigma > 0))):
        return
    for index, t in enumerate(timesteps.tolist()):
        if not alpha_t[index].item() > 0:
            raise ValueError(
                f"ᾱ_t = 0 at step {index} (timestep {t}), so x̂_0 is undefined; zero-terminal-SNR schedules "
                "(rescale_betas_zero_snr=True) with ε-prediction are not supported"
            )
        if not (math.isfinite(sigma[index].item()) and sigma[index].item() > 0):
            hint = ""
            if index == len(timesteps) - 1:
                hint = (
                    " set_alpha_to_one=True makes ᾱ_{t−1} = 1 at the last step"
                    if scheduler.config.set_alpha_to_one
                    else " the last step lands on its own ᾱ (timestep 0 with set_alpha_to_one=False)"
                ) + "; use set_alpha_to_one=False with steps_offset=1 (Stable Diffusion's settings)"
            raise ValueError(
                f"σ_t = {sigma[index].item()} at step {index} of {num_inference_steps} (timestep {t}): the step "
                f"has no density and its log-probability would be -inf/NaN.{hint}"
            )


def guided_noise_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: int | torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    guidance_scale: float,
    call_rows: int | None = None,
) -> torch.Tensor:
    """The CFG prediction ε̄ = ε(∅) + w·(ε(z) − ε(∅)) in one batched UNet call (no CFG without negatives).

    ``timesteps`` is a scalar or a (B,) tensor (one per latent). The float32 latents of a trajectory
    enter the UNet in its weights' dtype, the model's working dtype, as the stock pipeline keeps its latents.

    ``call_rows``: run the UNet in calls of exactly this many latents, the last one padded with copies of
    its last latent, so that every call has the same shape whatever the batch (``dpok.rl.precision``: the
    sampler and the update then compute each row with the same kernels, and the ratio of an unchanged
    policy is exactly 1). None: one call of the whole batch.
    """
    if call_rows is not None and latents.shape[0] != call_rows:
        return _in_calls_of(call_rows, unet, latents, timesteps, prompt_embeds, negative_prompt_embeds, guidance_scale)
    dtype = getattr(unet, "dtype", prompt_embeds.dtype)
    latents, prompt_embeds = latents.to(dtype), prompt_embeds.to(dtype)
    if negative_prompt_embeds is None:
        return unet(latents, timesteps, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
    model_input = torch.cat([latents, latents])
    if isinstance(timesteps, torch.Tensor) and timesteps.ndim == 1:
        timesteps = torch.cat([timesteps, timesteps])
    embeds = torch.cat([negative_prompt_embeds.to(dtype), prompt_embeds])
    prediction = unet(model_input, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
    uncond, text = prediction.chunk(2)
    return uncond + guidance_scale * (text - uncond)


def _in_calls_of(rows, unet, latents, timesteps, prompt_embeds, negative_prompt_embeds, guidance_scale):
    """:func:`guided_noise_prediction` in calls of ``rows`` latents each, the last padded (see there)."""
    count = latents.shape[0]
    if not isinstance(timesteps, torch.Tensor) or timesteps.ndim == 0:
        # one timestep per latent: what the UNet itself expands a scalar to
        timesteps = torch.as_tensor(timesteps, device=latents.device).reshape(1).expand(count)
    parts = []
    for start in range(0, count, rows):
        index = torch.arange(start, start + rows, device=latents.device).clamp(max=count - 1)
        negative = None if negative_prompt_embeds is None else negative_prompt_embeds[index]
        prediction = guided_noise_prediction(
            unet, latents[index], timesteps[index], prompt_embeds[index], negative, guidance_scale, rows
        )
        parts.append(prediction[: min(rows, count - start)])
    return torch.cat(parts)


@dataclass
class Trajectory:
    """A batch of sampled denoising trajectories, everything the update needs to replay its steps.

    Attributes:
        prompts: One prompt per trajectory.
        latents: ``x_T .. x_0`` in float32 (the step arithmetic's dtype), shape (B, T+1, C, H, W).
        timesteps: The scheduler timesteps of the T steps, shape (T,), step i goes latents[:, i] → [:, i+1].
        log_probs: log p_θ(x_{t−1} | x_t, z) of each step under the sampling policy, shape (B, T).
        noise_preds: The guided predictions ε̄_θ used at each step, shape (B, T, C, H, W) (for the KL report).
        prompt_embeds: Conditional text embeddings (B, L, D).
        negative_prompt_embeds: Unconditional embeddings (B, L, D), or None when sampled without CFG.
        images: Decoded ``x_0`` as uint8 (B, H, W, 3), or None for ``output_type="latent"``.
        guidance_scale: CFG weight w used.
        eta: DDIM η used.
    """

    prompts: list[str]
    latents: torch.Tensor
    timesteps: torch.Tensor
    log_probs: torch.Tensor
    noise_preds: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    images: np.ndarray | None
    guidance_scale: float
    eta: float

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    def window(self, start: int, stop: int) -> Trajectory:
        """Steps ``start`` to ``stop − 1`` only (0 = the first, noisiest step): the transitions that train."""
        if not 0 <= start < stop <= self.num_steps:
            raise ValueError(f"step window [{start}, {stop}) is not inside [0, {self.num_steps})")
        if (start, stop) == (0, self.num_steps):
            return self
        return replace(
            self,
            latents=self.latents[:, start : stop + 1],
            timesteps=self.timesteps[start:stop],
            log_probs=self.log_probs[:, start:stop],
            noise_preds=self.noise_preds[:, start:stop],
        )

    def to(self, device: torch.device | str) -> Trajectory:
        """The same trajectories with every tensor on ``device``."""
        negative = self.negative_prompt_embeds
        return replace(
            self,
            latents=self.latents.to(device),
            timesteps=self.timesteps.to(device),
            log_probs=self.log_probs.to(device),
            noise_preds=self.noise_preds.to(device),
            prompt_embeds=self.prompt_embeds.to(device),
            negative_prompt_embeds=None if negative is None else negative.to(device),
        )

    def subset(self, indices: Sequence[int]) -> Trajectory:
        """The trajectories at ``indices`` (in that order)."""
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        negative = self.negative_prompt_embeds
        return replace(
            self,
            prompts=[self.prompts[i] for i in rows.tolist()],
            latents=self.latents[rows],
            log_probs=self.log_probs[rows],
            noise_preds=self.noise_preds[rows],
            prompt_embeds=self.prompt_embeds[rows],
            negative_prompt_embeds=None if negative is None else negative[rows],
            images=None if self.images is None else self.images[rows.numpy()],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Trajectory]) -> Trajectory:
        """Join trajectory batches sampled with the same schedule along the batch dimension."""
        first = parts[0]
        if len(parts) == 1:
            return first
        if any(not torch.equal(p.timesteps, first.timesteps) for p in parts):
            raise ValueError("cannot concatenate trajectories sampled with different timesteps")
        has_negative = first.negative_prompt_embeds is not None
        return cls(
            prompts=[prompt for p in parts for prompt in p.prompts],
            latents=torch.cat([p.latents for p in parts]),
            timesteps=first.timesteps,
            log_probs=torch.cat([p.log_probs for p in parts]),
            noise_preds=torch.cat([p.noise_preds for p in parts]),
            prompt_embeds=torch.cat([p.prompt_embeds for p in parts]),
            negative_prompt_embeds=torch.cat([p.negative_prompt_embeds for p in parts]) if has_negative else None,
            images=None if first.images is None else np.concatenate([p.images for p in parts]),
            guidance_scale=first.guidance_scale,
            eta=first.eta,
        )


@torch.no_grad()
def decode_latents(pipeline, latents: torch.Tensor, generator: Generator = None) -> np.ndarray:
    """Final latents to uint8 NHWC images, as the stock pipeline call decodes them."""
    # The VAE decodes in its own dtype, as in the stock call: under the trainer's fp16 autocast its
    # GroupNorms would run in float32 at full resolution (measured on an H100 with SD v1.5: a 9.1 GiB
    # peak against the stock call's 6.1). The decoded image does not enter any log-probability.
    device = latents.device
    with torch.autocast(device.type, enabled=False):
        latents_for_vae = (latents / pipeline.vae.config.scaling_factor).to(pipeline.vae.dtype)
        decoded = pipeline.vae.decode(latents_for_vae, return_dict=False, generator=generator)[0]
    decoded = pipeline.image_processor.postprocess(
        decoded, output_type="np", do_denormalize=[True] * latents.shape[0]
    )
    return images_to_uint8(decoded)


@torch.no_grad()
def sample_trajectories(
    pipeline,
    prompts: Sequence[str],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    eta: float = 1.0,
    generator: Generator = None,
    latents: torch.Tensor | None = None,
    output_type: str = "np",
    call_rows: int | None = None,
    unet: torch.nn.Module | None = None,
) -> Trajectory:
    """Sample one trajectory per prompt with a ``StableDiffusionPipeline``'s components, with log-probs.

    Same computation and random draws as ``pipeline(prompts, num_inference_steps=..., guidance_scale=...,
    eta=..., generator=...)``: CFG iff ``guidance_scale > 1``, empty negative prompt, initial noise and
    per-step noise from ``generator`` (one generator, or one per prompt). ``output_type`` is ``"np"``
    (decode to uint8 NHWC images) or ``"latent"`` (no decoding, ``images`` is None). ``call_rows``: the
    shape of every UNet call (:func:`guided_noise_prediction`); ``unet``: the pipeline's UNet compiled
    (``torch.compile``), or None for the UNet itself.
    """
    if output_type not in ("np", "latent"):
        raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("sample_trajectories needs at least one prompt")
    if getattr(pipeline.unet.config, "time_cond_proj_dim", None) is not None:
        raise ValueError("UNets with a guidance embedding (time_cond_proj_dim, e.g. LCM) are not supported")
    scheduler = pipeline.scheduler
    validate_scheduler_for_logprob(scheduler, num_inference_steps, eta)
    device = pipeline._execution_device
    do_cfg = guidance_scale > 1.0

    prompt_embeds, negative_prompt_embeds = pipeline.encode_prompt(prompts, device, 1, do_cfg)
    if not do_cfg:
        negative_prompt_embeds = None
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    height = width = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    x = pipeline.prepare_latents(
        len(prompts), pipeline.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
    )

    all_latents, all_log_probs, all_noise_preds = [x.float()], [], []
    for t in timesteps:
        model_input = scheduler.scale_model_input(x, t)  # the identity for DDIM, kept as the stock loop has it
        noise_pred = guided_noise_prediction(
            pipeline.unet if unet is None else unet, model_input, t, prompt_embeds, negative_prompt_embeds, guidance_scale, call_rows
        )
        x, log_prob = ddim_step_with_logprob(scheduler, noise_pred, t, x, eta, generator=generator)
        all_latents.append(x)
        all_log_probs.append(log_prob)
        all_noise_preds.append(noise_pred)

    images = decode_latents(pipeline, x, generator) if output_type == "np" else None

    return Trajectory(
        prompts=prompts,
        latents=torch.stack(all_latents, dim=1),
        timesteps=timesteps.detach().clone(),
        log_probs=torch.stack(all_log_probs, dim=1),
        noise_preds=torch.stack(all_noise_preds, dim=1),
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        images=images,
        guidance_scale=float(guidance_scale),
        eta=float(eta),
    )

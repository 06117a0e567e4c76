"""The KL regulariser of docs/algorithm.md §3 and the adapter switch that gives the pretrained model.

Both step distributions are Gaussians with the same σ_t, so the per-step KL is exact:
``KL_t = ‖μ_θ − μ_pre‖² / (2σ_t²)``, summed over the latent's elements (nats). Summed over the steps of
a trajectory sampled from p_θ it is an upper bound on ``KL(p_θ(x_0|z) ‖ p_pre(x_0|z))``.
The official code instead penalises ``mean((ε̄_θ − ε̄_pre)²)`` ("eps_mse"; for a v-prediction model it
is the MSE of the guided v̄). Either can be optimised; the exact bound is always what we report.

The pretrained model is the same UNet with its LoRA adapter switched off (:func:`reference_model`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dpok.rl.sampling import Trajectory, ddim_step_mean_std, guided_noise_prediction

KL_FORMS = ("exact", "eps_mse")


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std²) ‖ N(mean_q, std²)) summed over all but the batch dimension, shape (B,)."""
    kl = (mean_p.float() - mean_q.float()) ** 2 / (2 * std.float() ** 2)
    return kl.sum(dim=tuple(range(1, kl.ndim)))


def eps_mse(model_output: torch.Tensor, reference_output: torch.Tensor) -> torch.Tensor:
    """DPOK's surrogate: mean((ε̄_θ − ε̄_pre)²) over all but the batch dimension, shape (B,)."""
    squared = (model_output.float() - reference_output.float()) ** 2
    return squared.mean(dim=tuple(range(1, squared.ndim)))


def step_kl(
    kl_form: str,
    scheduler,
    model_output: torch.Tensor,
    reference_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
) -> torch.Tensor:
    """Per-transition KL term of the chosen form (``"exact"`` in nats, or ``"eps_mse"``), shape (B,).

    ``model_output``/``reference_output`` are the guided predictions of the policy and of the
    pretrained model at ``(sample, timestep)``.
    """
    if kl_form == "exact":
        mean_policy, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
        mean_reference, _ = ddim_step_mean_std(scheduler, reference_output, timestep, sample, eta)
        return gaussian_kl(mean_policy, mean_reference, std)
    if kl_form == "eps_mse":
        return eps_mse(model_output, reference_output)
    raise ValueError(f"kl_form must be one of {KL_FORMS}, got {kl_form!r}")


@contextmanager
def reference_model(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, ``unet`` is the pretrained model: its adapters are disabled.

    peft's switch also sets the adapter weights' ``requires_grad`` to False (and True on re-enabling);
    we restore each weight's flag exactly as it was, so frozen stays frozen and trainable stays trainable.
    """
    flags = [(p, p.requires_grad) for name, p in unet.named_parameters() if "lora_" in name]
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


@torch.no_grad()
def trajectory_kl_bound(
    unet: torch.nn.Module,
    scheduler,
    trajectory: Trajectory,
    *,
    num_trajectories: int | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The exact KL upper bound Σ_t KL_t (nats) of each of the first ``num_trajectories`` trajectories.

    Uses the policy's guided predictions stored at sampling time and evaluates the pretrained model
    (adapter off) on the same ``x_t``; all (trajectory, step) pairs are batched, ``chunk_size`` at a time.
    Shape (num_trajectories,). The scheduler must be set to the trajectory's number of steps.
    """
    n = trajectory.batch_size if num_trajectories is None else min(num_trajectories, trajectory.batch_size)
    steps = trajectory.num_steps
    latent_shape = trajectory.latents.shape[2:]
    x_t = trajectory.latents[:n, :-1].reshape(n * steps, *latent_shape)
    policy_output = trajectory.noise_preds[:n].reshape(n * steps, *latent_shape)
    timesteps = trajectory.timesteps.to(x_t.device).repeat(n)
    cond = trajectory.prompt_embeds[:n].repeat_interleave(steps, dim=0)
    uncond = trajectory.negative_prompt_embeds
    uncond = None if uncond is None else uncond[:n].repeat_interleave(steps, dim=0)

    kl = []
    with reference_model(unet):
        for start in range(0, n * steps, chunk_size):
            part = slice(start, start + chunk_size)
            reference_output = guided_noise_prediction(
                unet, x_t[part], timesteps[part], cond[part],
                None if uncond is None else uncond[part], trajectory.guidance_scale,
            )
            kl.append(step_kl("exact", scheduler, policy_output[part], reference_output, timesteps[part],
                              x_t[part], trajectory.eta))
    return torch.cat(kl).reshape(n, steps).sum(dim=1)

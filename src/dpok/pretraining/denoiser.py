"""Stage 2: the text-conditioned UNet, trained jointly with a small CLIP text encoder from scratch."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from dpok.models import build_text_encoder, build_unet
from dpok.pretraining.config import DenoiserConfig
from dpok.pretraining.schedule import warmup_cosine


def _token_table(tokenizer: CLIPTokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of each distinct caption (plus "" for dropout) and each example's row in that table.

    Padded to the tokenizer's full length exactly as ``StableDiffusionPipeline.encode_prompt`` does,
    so training sees the same inputs as sampling.
    """
    distinct = sorted(set(captions))
    ids = tokenizer(
        [""] + distinct, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    row = {caption: i + 1 for i, caption in enumerate(distinct)}
    return ids, torch.tensor([row[c] for c in captions])


def train_denoiser(
    latents: torch.Tensor,
    captions: list[str],
    tokenizer: CLIPTokenizer,
    noise_scheduler_config: dict,
    config: DenoiserConfig,
    seed: int,
    progress: bool = True,
) -> tuple[UNet2DConditionModel, CLIPTextModel, list[dict[str, float]]]:
    """ε-prediction training on scaled latents (N, C, h, w) with captions; returns EMA weights."""
    if len(latents) != len(captions):
        raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = build_unet(
        {
            "sample_size": latents.shape[-1],
            "in_channels": latents.shape[1],
            "out_channels": latents.shape[1],
            **config.unet,
        }
    )
    text_encoder = build_text_encoder(config.text_encoder, tokenizer)
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"pretrain.denoiser.unet.cross_attention_dim ({unet.config.cross_attention_dim}) must equal "
            f"pretrain.denoiser.text_encoder.hidden_size ({text_encoder.config.hidden_size})"
        )
    noise_scheduler = DDPMScheduler.from_config(noise_scheduler_config)
    token_ids, caption_rows = _token_table(tokenizer, captions)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    lr_schedule = warmup_cosine(optimizer, config.steps, warmup=max(1, config.steps // 30))
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True) if config.ema_decay > 0 else None
    unet.train()
    text_encoder.train()
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc="denoiser", disable=not progress, mininterval=2)
    running = None
    for step in bar:
        index = torch.randint(len(latents), (config.batch_size,), generator=generator)
        x0 = latents[index]
        rows = caption_rows[index].clone()
        rows[torch.rand(config.batch_size, generator=generator) < config.caption_dropout] = 0
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        encoder_hidden_states = text_encoder(token_ids[rows])[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(params)
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if step % 10 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": float(loss), "loss_smoothed": running})
            bar.set_postfix(loss=f"{running:.4f}")
    if ema is not None:
        ema.copy_to(params)
    for module in (unet, text_encoder):
        module.eval()
        module.requires_grad_(False)
    return unet, text_encoder, history

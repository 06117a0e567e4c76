"""LoRA on the UNet through peft, saved and loaded in the diffusers format.

The saved file (``pytorch_lora_weights.safetensors``) is what a stock pipeline's
``load_lora_weights(folder)`` reads, with the adapter's rank/alpha/targets stored as metadata so that
convolution LoRA layers load back too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

ADAPTER_NAME = "dpok"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_config(rank: int, alpha: float, target_modules: Sequence[str]) -> LoraConfig:
    """peft config; B starts at zero so the adapted model equals the pretrained one at step 0."""
    return LoraConfig(
        r=int(rank), lora_alpha=float(alpha), target_modules=list(target_modules), init_lora_weights=True
    )


def attach_lora(unet: UNet2DConditionModel, rank: int, alpha: float, target_modules: Sequence[str]) -> list[torch.nn.Parameter]:
    """Add the trainable adapter to ``unet`` (in place) and return its parameters."""
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank, alpha, target_modules), adapter_name=ADAPTER_NAME)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    if not params:
        raise ValueError(f"LoRA target_modules {list(target_modules)} matched no layer of the UNet")
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's names (as used for checkpoints)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()}


def load_lora_state_dict(unet: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> None:
    """Restore adapter weights written by :func:`lora_state_dict` (for resuming)."""
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint has LoRA keys this UNet's adapter lacks: {unexpected[:5]}")


def save_lora(unet: UNet2DConditionModel, directory: str | Path) -> Path:
    """Write the adapter in the diffusers format that ``load_lora_weights`` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = unet.peft_config[ADAPTER_NAME]
    # peft key names (lora_A/lora_B) as they are: diffusers' convert_state_dict_to_diffusers renames only the
    # attention layers to the legacy lora.down/up form, and load_lora_weights then drops them silently.
    layers = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=layers,
        safe_serialization=True,
        weight_name=LORA_WEIGHT_NAME,
        unet_lora_adapter_metadata=config.to_dict(),
    )
    return directory / LORA_WEIGHT_NAME


def load_lora(pipeline: StableDiffusionPipeline, directory: str | Path) -> StableDiffusionPipeline:
    """Load a saved adapter into a stock pipeline (what a user serving the model does)."""
    directory = Path(directory)
    if not (directory / LORA_WEIGHT_NAME).is_file():
        raise FileNotFoundError(
            f"no LoRA at '{directory / LORA_WEIGHT_NAME}': run `kedro run --pipelines finetune` first"
        )
    pipeline.load_lora_weights(str(directory), weight_name=LORA_WEIGHT_NAME, adapter_name=ADAPTER_NAME)
    return pipeline

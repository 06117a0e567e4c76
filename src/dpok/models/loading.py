"""Load a diffusers text-to-image pipeline from a local folder or a hub id, ready for DPOK.

One home for model loading: datasets, nodes and scripts all call :func:`load_pipeline`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSourceError(FileNotFoundError):
    """The configured model is neither a local pipeline folder nor a reachable hub id."""


def _is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/", "~"))


def resolve_model_source(source: str, root: str | Path = ".") -> str:
    """The local folder path for ``source`` if it is one, else ``source`` as a hub id.

    Raises :class:`ModelSourceError` (before anything heavy happens) when a local-looking path does
    not exist or is no pipeline folder, or when a hub id is given while the hub is offline and the id
    is not cached.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError("model path is empty: set it to a pipeline folder or a hub id")
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path(root) / path
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelSourceError(
                f"model path '{source}' exists but has no model_index.json: point it at a diffusers "
                "pipeline folder (as written by save_pretrained)"
            )
        return str(path)
    if not _is_hub_id(source):
        raise ModelSourceError(
            f"model path '{source}' does not exist: fix the path (relative to the project root) or "
            "give a hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5'"
        )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "model_index.json"), str):
            raise ModelSourceError(
                f"model '{source}' is not a local folder, is not in the hub cache, and HF_HUB_OFFLINE=1: "
                "download it once online (unset HF_HUB_OFFLINE) or give a local folder"
            )
    return source


def load_pipeline(
    source: str,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    root: str | Path = ".",
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` with a DDIM scheduler, no safety checker, frozen weights."""
    resolved = resolve_model_source(source, root)
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    pipeline = StableDiffusionPipeline.from_pretrained(resolved, **kwargs)
    if not isinstance(pipeline.scheduler, DDIMScheduler):
        # DPOK's log-probabilities are those of the DDIM η=1 sampler; keep the model's noise schedule.
        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
        module.eval()
    return pipeline.to(device)

"""A Kedro dataset for a diffusers ``StableDiffusionPipeline``: a local folder or a hub id."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from kedro.io import AbstractDataset, DatasetError

from dpok.datasets.atomic import write_folder_atomically
from dpok.models import load_pipeline, resolve_model_source


class DiffusersPipelineDataset(AbstractDataset[StableDiffusionPipeline, StableDiffusionPipeline]):
    """Loads with :func:`dpok.models.load_pipeline` (DDIM scheduler, no safety checker, frozen);
    saves with ``save_pretrained`` (safetensors) into a temp folder renamed into place.

    Example catalog entry::

        base_model:
          type: dpok.datasets.DiffusersPipelineDataset
          path: data/06_models/shapes_base      # or a hub id: stable-diffusion-v1-5/stable-diffusion-v1-5
          torch_dtype: float32
    """

    def __init__(self, path: str, torch_dtype: str | None = None, metadata: dict[str, Any] | None = None):
        self._path = path
        self._torch_dtype = torch_dtype
        self.metadata = metadata

    def _dtype(self) -> torch.dtype | None:
        if self._torch_dtype is None:
            return None
        dtype = getattr(torch, self._torch_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise DatasetError(f"torch_dtype '{self._torch_dtype}' is not a torch dtype (float32, float16, bfloat16)")
        return dtype

    def load(self) -> StableDiffusionPipeline:
        return load_pipeline(self._path, torch_dtype=self._dtype())

    def save(self, data: StableDiffusionPipeline) -> None:
        write_folder_atomically(self._path, lambda tmp: data.save_pretrained(tmp, safe_serialization=True))

    def _exists(self) -> bool:
        try:
            resolve_model_source(self._path)
        except FileNotFoundError:
            return False
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "torch_dtype": self._torch_dtype}

"""A Kedro dataset for LoRA weights in the diffusers format (``pytorch_lora_weights.safetensors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError
from safetensors.torch import load_file

from dpok.datasets.atomic import write_folder_atomically
from dpok.models import LORA_WEIGHT_NAME, save_lora


class LoraWeightsDataset(AbstractDataset[Any, Path]):
    """Saves the adapter of a peft-adapted UNet (the object the finetune node returns) with
    :func:`dpok.models.save_lora`, atomically; loads back the *folder path*, which is what
    ``pipeline.load_lora_weights`` (or :func:`dpok.models.load_lora`) takes.

    Example catalog entry::

        lora:
          type: dpok.datasets.LoraWeightsDataset
          path: data/06_models/lora
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        if not (self._path / LORA_WEIGHT_NAME).is_file():
            raise DatasetError(
                f"no LoRA weights at '{self._path / LORA_WEIGHT_NAME}': run `kedro run --pipelines finetune` first"
            )
        return self._path

    def save(self, data: Any) -> None:
        write_folder_atomically(self._path, lambda tmp: save_lora(data, tmp))

    def _exists(self) -> bool:
        return (self._path / LORA_WEIGHT_NAME).is_file()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The raw tensors (for inspection and tests)."""
        if not self._exists():
            raise DatasetError(f"no LoRA weights at '{self._path}'")
        return load_file(self._path / LORA_WEIGHT_NAME)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

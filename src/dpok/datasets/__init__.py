"""Kedro datasets the ecosystem lacks: a diffusers pipeline folder (or hub id), a LoRA folder, and an image
set written all at once."""

from dpok.datasets.diffusers_pipeline import DiffusersPipelineDataset
from dpok.datasets.image_set import AtomicPartitionedDataset
from dpok.datasets.lora import LoraWeightsDataset

__all__ = ["AtomicPartitionedDataset", "DiffusersPipelineDataset", "LoraWeightsDataset"]

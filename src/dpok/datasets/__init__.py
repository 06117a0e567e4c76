"""Kedro datasets the ecosystem lacks: a diffusers pipeline folder (or hub id) and a LoRA folder."""

from dpok.datasets.diffusers_pipeline import DiffusersPipelineDataset
from dpok.datasets.lora import LoraWeightsDataset

__all__ = ["DiffusersPipelineDataset", "LoraWeightsDataset"]

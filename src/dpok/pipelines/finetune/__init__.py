"""finetune: DPOK online RL on the UNet's LoRA (`kedro run --pipelines finetune`).

Ingests the prompt set (the `prompts` pipeline's node), validates every parameter before any model is
loaded, loads the base model (`base_model`: a diffusers pipeline folder or hub id), trains with
:func:`dpok.rl.train_dpok` (checkpoints under `data/06_models/checkpoints/`, resumed by default), and
writes the LoRA in diffusers format (`data/06_models/lora/`), the per-round history CSV and learning
curves (`data/08_reporting/`). Per-round metrics go to MLflow as they happen.
"""

from dpok.pipelines.finetune.pipeline import create_pipeline

__all__ = ["create_pipeline"]

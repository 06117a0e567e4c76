"""pretrain: retrain the shipped shapes-world base model (`data/06_models/shapes_base`).

Renders a training set with a skewed caption distribution, trains the autoencoder, then the UNet with
a CLIP text encoder from scratch, assembles a stock `StableDiffusionPipeline` folder, and reports the
base model's judge/quality per category and for common/rare/unseen prompts. Not part of `__default__`:
run it by name (`kedro run --pipelines pretrain`; about an hour on 2 CPU cores, docs/base_model.md).
"""

from dpok.pipelines.pretrain.pipeline import create_pipeline

__all__ = ["create_pipeline"]

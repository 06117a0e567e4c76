"""pretrained_samples: the base model's evaluation samples, the reference every fine-tuned model is compared to.

For every prompt of the prompt table (train and held-out splits) it draws N images (``pretrained_samples.
images_per_prompt``, default 16) with seeds derived from ``pretrained_samples.seed``, drawn with the shared
``sampler``, one generator per image,
and scores each batch with every configured reward and quality function as it is drawn. The images
are written lazily as PNG files (``data/07_model_output/pretrained_samples/``, one batch in memory at a
time) and described by a manifest (``data/07_model_output/pretrained_manifest.parquet``: prompt,
category, split, seed, file, one column per score). The ``evaluate`` pipeline samples the fine-tuned
model on exactly these prompts and seeds.
"""

from dpok.pipelines.pretrained_samples.pipeline import create_pipeline

__all__ = ["create_pipeline"]

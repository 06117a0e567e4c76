"""pretrained: the old name of ``pretrained_samples`` (the base model's evaluation samples), kept as an alias
for a while so that ``kedro run --pipelines pretrained`` still works; use ``pretrained_samples``."""

from dpok.pipelines.pretrained_samples import create_pipeline

__all__ = ["create_pipeline"]

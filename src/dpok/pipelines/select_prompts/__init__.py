"""``select_prompts`` (run by name): measure the base model on every prompt of the shapes grammar and
write the training / held-out prompt set with headroom (``dpok.prompts.headroom``)."""

from dpok.pipelines.select_prompts.pipeline import create_pipeline

__all__ = ["create_pipeline"]

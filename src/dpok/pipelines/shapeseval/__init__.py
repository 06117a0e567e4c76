"""``shapeseval`` (run by name): the base model and the fine-tuned LoRA on the test prompts of ShapesEval
(``data/01_raw/prompts/shapeseval.csv``, :mod:`dpok.prompts.shapeseval`), from the same noise, scored
GenEval's way (:mod:`dpok.evaluation.shapeseval`): accuracy per category and overall, mean judge and quality,
paired differences with bootstrap CIs. Writes ``data/08_reporting/shapeseval{.json,.md,.png,_scores.csv}``."""

from dpok.pipelines.shapeseval.pipeline import create_pipeline

__all__ = ["create_pipeline"]

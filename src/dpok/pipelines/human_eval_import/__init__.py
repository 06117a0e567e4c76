"""human_eval_import: the raters' answers, validated, unblinded and summarised.

Reads every ``*.csv`` in ``data/01_raw/human_eval_ratings/`` (the files the rater page downloads, or
any tool's export with columns pair_id, rater, q_text, q_quality), checks them against the key that
``evaluate`` wrote (``data/08_reporting/human_eval_key.csv``): an unknown pair id, a duplicate answer,
a bad value or a missing rater stops the run with the file and line. Then it unblinds the answers and
writes the fine-tuned model's win rate with a 95 % binomial CI per question (text alignment, image
quality), overall, per category and per split, to ``data/08_reporting/human_eval_results.json``, and
the unblinded answers to ``data/08_reporting/human_eval_answers.csv``. Run it by name after the
ratings are in: ``kedro run --pipelines human_eval_import``.
"""

from dpok.pipelines.human_eval_import.pipeline import create_pipeline

__all__ = ["create_pipeline"]

"""evaluate: the fine-tuned model against the base model, on the same prompts and the same noise.

Loads the base model with the fine-tuned LoRA and samples exactly the prompts and seeds of the base
model's manifest (written by ``pretrained``, with the same ``pretrained`` sampler settings; a mismatch
is refused). The images are written lazily to ``data/07_model_output/finetuned_samples/`` and scored
per batch (manifest ``finetuned_manifest.parquet``). Then, in ``data/08_reporting/``:

- ``metrics.json`` (DVC metrics): per split and category, the mean and 95 % bootstrap CI of every
  reward and quality score for base and fine-tuned, and their paired difference with its CI;
- ``comparison_grid.png`` (rows: prompts; columns: base | fine-tuned at the same seeds);
- ``report.md`` embedding it and the finetune pipeline's curves, with the time split (``evaluate_timing.json``: the share of the
  pipeline's wall time spent outside sampling);
- ``human_eval/`` (blinded pairs for raters: ``index.html``, ``pairs.csv``, ``img/``) and its key
  ``human_eval_key.csv`` outside that folder.

Metrics, figures, report and manifests are logged to MLflow.
"""

from dpok.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]

"""prompts: read the prompt file named by `prompts.path`, validate it, give it splits, and write the
prompt table (`data/02_intermediate/prompts.parquet`) and a summary (`data/08_reporting/`)."""

from dpok.pipelines.prompts.pipeline import create_pipeline

__all__ = ["create_pipeline"]

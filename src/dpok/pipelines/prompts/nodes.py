"""Thin node over :mod:`dpok.prompts`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from dpok.prompts import PromptsConfig, load_prompt_table

logger = logging.getLogger(__name__)


def ingest_prompts(params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate the prompt file; fails with a clear error before any model is loaded."""
    config = PromptsConfig.from_dict(params)
    table, summary = load_prompt_table(config)
    logger.info(
        "Prompts: %d from %s (%s), %d duplicate(s) dropped",
        summary["n_prompts"],
        config.path,
        summary["per_split"],
        summary["duplicates_dropped"],
    )
    return table, summary

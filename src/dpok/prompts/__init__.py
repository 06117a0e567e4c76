"""Prompt sets: read a prompt file in any supported format, validate it, and give it splits.

Pure library code (no Kedro). The `prompts` pipeline is a thin adapter over `load_prompt_table`.
"""

from dpok.prompts.table import (
    SPLITS,
    PromptFileError,
    PromptsConfig,
    load_prompt_table,
    read_prompt_file,
    summarise_prompts,
)

__all__ = [
    "SPLITS",
    "PromptFileError",
    "PromptsConfig",
    "load_prompt_table",
    "read_prompt_file",
    "summarise_prompts",
]

"""Kedro hooks of the project: the summary a user reads when a run that fine-tuned ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from dpok.evaluation.history import run_summary

# Catalog entries whose files the summary points to, by label.
_SUMMARY_OUTPUTS = {
    "LoRA": "lora",
    "learning curves": "finetune_curves",
    "reward by category": "finetune_reward_curves",
    "history": "finetune_history",
    "report": "evaluation_report",
    "comparison grid": "comparison_grid",
}


def _file(entry: Any) -> str | None:
    """The entry's file or folder, relative to the working directory when inside it (Kedro makes them absolute)."""
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("dataset"), dict):  # kedro-mlflow's artifact wrapper
        return _file(entry["dataset"])
    path = next((Path(entry[key]) for key in ("filepath", "path") if key in entry), None)
    if path is None:
        return None
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


class RunSummaryHook:
    """After a run that includes fine-tuning: reward at the start and end, KL bound, where to look next."""

    def __init__(self) -> None:
        self._conf_catalog: dict[str, Any] = {}

    @hook_impl
    def after_catalog_created(self, conf_catalog: dict[str, Any]) -> None:
        self._conf_catalog = conf_catalog

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        outputs = pipeline.all_outputs()
        if "finetune_history" not in outputs:
            return
        evaluated = "evaluation_report" in outputs
        paths = {
            label: path for label, name in _SUMMARY_OUTPUTS.items()
            if (name in outputs or name == "lora") and (path := _file(self._conf_catalog.get(name)))
        }
        env = run_params.get("env")
        flag = f" --env {env}" if env and env != "local" else ""
        next_command = None if evaluated else (
            f"kedro run{flag} --pipelines pretrained && kedro run{flag} --pipelines evaluate"
        )
        # Printed, not logged: a log handler would wrap the paths and prefix every line.
        print("\n" + run_summary(catalog.load("finetune_history"), paths, next_command), flush=True)

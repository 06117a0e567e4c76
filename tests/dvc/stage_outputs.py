"""Derive each DVC stage's outputs from the Kedro pipeline it runs (shared by the drift test)."""

from __future__ import annotations

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project


def _file_path(entry: dict) -> str | None:
    """Where a catalog entry writes, or None for in-memory and MLflow-only entries."""
    if not isinstance(entry, dict):
        return None
    if "dataset" in entry and entry.get("type", "").endswith("MlflowArtifactDataset"):
        return _file_path(entry["dataset"])
    for key in ("filepath", "path"):
        if key in entry:
            return str(entry[key])
    return None


def kedro_stage_outputs(project_root: Path) -> dict[str, set[str]]:
    """{pipeline name: file paths its outputs are saved to}, from the base catalog."""
    bootstrap_project(project_root)
    catalog = OmegaConfigLoader(str(project_root / "conf"), base_env="base", default_run_env="base")["catalog"]
    outputs = {}
    for name, pipeline in pipelines.items():
        if name == "__default__":
            continue
        paths = {_file_path(catalog.get(dataset)) for dataset in pipeline.all_outputs()}
        outputs[name] = {p for p in paths if p}
    return outputs

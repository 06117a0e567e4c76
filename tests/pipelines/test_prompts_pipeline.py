"""The prompts pipeline on an in-memory catalog, and the project through a KedroSession."""

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from dpok.pipelines.prompts import create_pipeline


def test_prompts_pipeline_in_memory(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red circle\na red circle\na blue square\n")
    catalog = DataCatalog()
    catalog["params:prompts"] = MemoryDataset({"path": str(f), "max_chars": 100, "heldout_fraction": 0.0})
    SequentialRunner().run(create_pipeline(), catalog)
    table = catalog.load("prompts")
    assert table["prompt"].tolist() == ["a red circle", "a blue square"]
    assert catalog.load("prompts_summary")["duplicates_dropped"] == 1


def _copy_project(project_root, tmp_path):
    target = tmp_path / "project"
    shutil.copytree(
        project_root, target,
        ignore=shutil.ignore_patterns(".venv", ".git", "mlruns", "mlflow.db", "data", "__pycache__", ".pytest_cache"),
    )
    shutil.copytree(project_root / "data/01_raw", target / "data/01_raw")
    return target


def test_kedro_session_runs_prompts_pipeline(project_root, tmp_path, monkeypatch):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    target = _copy_project(project_root, tmp_path)
    monkeypatch.chdir(target)
    bootstrap_project(target)
    with KedroSession.create(project_path=target) as session:
        session.run(pipeline_names=["prompts"])
    table = pd.read_parquet(target / "data/02_intermediate/prompts.parquet")
    summary = json.loads((target / "data/08_reporting/prompts_summary.json").read_text())
    assert len(table) == summary["n_prompts"] > 0
    assert set(table["split"]) <= {"train", "heldout"}
    assert (target / "mlflow.db").exists(), "kedro-mlflow should track to the local sqlite store"


@pytest.mark.slow  # the same error in-process: tests/test_bad_inputs.py
def test_cli_bad_prompt_file_fails_with_clear_error(project_root, tmp_path):
    target = _copy_project(project_root, tmp_path)
    kedro = str(project_root / ".venv/bin/kedro") if (project_root / ".venv/bin/kedro").exists() else "kedro"
    result = subprocess.run(
        [kedro, "run", "--pipelines", "prompts", "--params", "prompts.path=data/01_raw/prompts/nope.txt"],
        cwd=target, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(project_root / "src")},
    )
    assert result.returncode != 0
    assert "nope.txt" in (result.stdout + result.stderr) and "does not exist" in (result.stdout + result.stderr)
    assert not (target / "data/02_intermediate/prompts.parquet").exists()

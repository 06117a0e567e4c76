"""notebooks/after_a_run.ipynb runs headlessly on a copy of the project with synthetic run outputs."""

import json

import nbformat
import numpy as np
import pandas as pd
from nbclient import NotebookClient

from dpok.evaluation import comparison_metrics, curves_figure, image_grid, pair_manifests

from helpers import XSS_PROMPT, copy_project


def _synthetic_outputs(reporting):
    """What an evaluate run leaves in data/08_reporting/, in miniature."""
    reporting.mkdir(parents=True)
    rng = np.random.default_rng(0)
    prompts = [("a red circle", "color", "train"), (XSS_PROMPT, "location", "heldout")]
    base = pd.DataFrame([{"prompt": p, "category": c, "split": s, "seed": k, "file": f"{i}_{k}.png"}
                         for i, (p, c, s) in enumerate(prompts) for k in range(4)])
    base["r"] = rng.normal(size=len(base))
    tuned = base.assign(r=base["r"] + 0.5)
    metrics = comparison_metrics(pair_manifests(base, tuned, ["r"]), {"r": "reward"}, n_resamples=100)
    (reporting / "metrics.json").write_text(json.dumps(metrics))
    image_grid([rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)] * 2, ["a red circle", XSS_PROMPT]).save(
        reporting / "comparison_grid.png")
    curves_figure({"reward_mean": ([1, 2, 3], [0.1, 0.3, 0.4])}, "DPOK fine-tuning", "round").save(
        reporting / "finetune_curves.png")
    return metrics


def test_after_a_run_notebook_executes_and_shows_grid_table_and_curves(tmp_path, monkeypatch):
    project = copy_project(tmp_path, data=())
    metrics = _synthetic_outputs(project / "data/08_reporting")
    # kedro-mlflow connects to the tracking store when the session starts; creating the sqlite store
    # takes ~7 s of migrations. The notebook tracks nothing, so the copy uses mlflow's file store.
    (project / "conf/local/mlflow.yml").write_text(
        (project / "conf/base/mlflow.yml").read_text().replace("sqlite:///mlflow.db", "mlruns"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    notebook = nbformat.read(project / "notebooks/after_a_run.ipynb", as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") for cell in code_cells), "commit the notebook without outputs"

    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the comparison grid and the learning curves
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("difference_mean" in t and "heldout" in t and "location" in t for t in tables)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{metrics['n_images']} image pairs, {metrics['n_prompts']} prompts" in printed
    assert not any(XSS_PROMPT in t for t in tables)

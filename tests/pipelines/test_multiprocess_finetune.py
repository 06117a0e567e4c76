"""README's multi-process command, `accelerate launch --multi_gpu --num_processes 2 -m kedro run --pipelines
finetune`, on CPU from a copy of the project: it trains, and only rank 0 writes outputs and tracks to MLflow."""

from __future__ import annotations

import sqlite3
import subprocess

import pandas as pd
import pytest

from helpers import OFFLINE_ENV, accelerate_launch, copy_project

SMALL = ("finetune.rl.runtime.num_rounds=2,finetune.rl.rollout.g_batch=8,sampler.num_inference_steps=10,"
         "finetune.rl.runtime.kl_report_trajectories=2")


@pytest.mark.slow
def test_two_processes_run_the_finetune_pipeline_and_rank_0_alone_writes(tmp_path):
    project = copy_project(tmp_path, data=("data/01_raw", "data/06_models/shapes_base"))
    command = [*accelerate_launch(2), "-m", "kedro", "run", "--pipelines", "finetune", "--params", SMALL]
    done = subprocess.run(command, cwd=project, env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    history = pd.read_csv(project / "data/08_reporting/finetune_history.csv")
    assert history["round"].tolist() == [1, 2]
    assert (project / "data/06_models/lora/pytorch_lora_weights.safetensors").is_file()
    # Both ranks run every node; rank 0 alone logs, writes, tracks and prints the summary.
    assert output.count("DPOK: ") == 1 and output.count("DPOK finished 2 round(s)") == 1
    assert output.count("Running node") == 5 and output.count("Saving data to") == 9  # each output once
    with sqlite3.connect(project / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    checkpoints = sorted(p.name for p in (project / "data/06_models/checkpoints").glob("run-*/*"))
    assert checkpoints == ["identity.json", "round_000002"]

"""The slow checks, run by hand (`pytest -m slow`), never in CI: `make run`'s command and `dvc repro`
end to end on a fresh clone of the committed project, on the embedded default (CPU)."""

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import OFFLINE_ENV, ROOT

ENV = {
    **OFFLINE_ENV, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}

pytestmark = pytest.mark.slow


def sh(command: str, cwd: Path, timeout: int = 3600) -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr, time.perf_counter() - start


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("clone") / "dpok"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


def test_dvc_repro_end_to_end_then_nothing_then_only_finetune_and_evaluate(clone):
    out, seconds = sh("dvc repro", clone)
    print(f"dvc repro: {seconds:.0f} s")
    assert seconds < 20 * 60
    metrics = json.loads((clone / "data/08_reporting/metrics.json").read_text())
    assert metrics
    out, _ = sh("dvc repro", clone)
    assert "Running stage" not in out, out
    out, _ = sh("dvc exp run -S 'conf/base/parameters_finetune.yml:finetune.rl.kl.weight=0.02'", clone)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"finetune", "evaluate"}, out
    shown, _ = sh("dvc exp show --no-pager --md", clone)
    assert "kl_weight" in shown or "0.02" in shown


def test_single_prompt_environment_lifts_the_judge_as_the_readme_says(clone):
    """`kedro run --env shapes_single` (README's quickstart; docs/experiments.md): 60 rounds on one prompt."""
    out, seconds = sh("kedro run --env shapes_single", clone)
    print(f"kedro run --env shapes_single: {seconds:.0f} s")
    assert seconds < 10 * 60
    metrics = json.loads((clone / "data/08_reporting/shapes_single/metrics.json").read_text())["all"]
    judge, quality = metrics["shapes_judge"], metrics["shapes_quality"]
    assert judge["difference"]["mean"] >= 0.15, judge
    assert quality["finetuned"]["mean"] >= 0.95 * quality["base"]["mean"], quality
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", status  # its outputs are ignored folders, apart from the default run's


def test_default_run_improves_the_training_prompts_as_the_readme_says(clone):
    """`kedro run` (prompts → pretrained → finetune → evaluate) on a fresh clone: what README says of the
    default multi-prompt run. With p_step 4, value shrinkage and 54 rounds, `dvc repro` (seed 0, 2 threads)
    gained +0.156 [+0.109, +0.205] with quality 0.99× and held out +0.088 in 717 s of rounds; 1-thread runs
    of the same settings at other seeds and round counts gained +0.13 to +0.21. Runs part with the thread
    count and the machine, so this checks the lower end of that spread (a regression fails), and the
    value baseline's per-step report."""
    out, seconds = sh("kedro run", clone)
    history = pd.read_csv(clone / "data/08_reporting/finetune_history.csv")
    finetune_seconds = float(history.filter(like="seconds_").to_numpy().sum())
    print(f"kedro run: {seconds:.0f} s, of which the finetune rounds {finetune_seconds:.0f} s")
    assert finetune_seconds < 15 * 60
    metrics = json.loads((clone / "data/08_reporting/metrics.json").read_text())["per_split"]
    train, heldout = metrics["train"], metrics["heldout"]
    judge = train["shapes_judge"]["difference"]
    assert judge["mean"] >= 0.09 and judge["ci_low"] >= 0.03, judge
    quality = train["shapes_quality"]
    assert quality["finetuned"]["mean"] >= 0.95 * quality["base"]["mean"], quality
    assert heldout["shapes_judge"]["difference"]["mean"] >= -0.02, heldout["shapes_judge"]
    assert (clone / "data/08_reporting/finetune_reward_curves.png").is_file()
    by_step = pd.read_csv(clone / "data/08_reporting/finetune_value_by_step.csv")
    assert len(by_step) == 20 and by_step["value_variance_ratio"].mean() < 1.0, by_step

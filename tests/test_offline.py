"""The default `kedro run` needs no network at all: run in a network namespace of its own (`unshare -n`),
with a bare environment (no HF_HUB_OFFLINE, no telemetry opt-outs), on a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import BIN, copy_project


def _no_network_available() -> str | None:
    if shutil.which("unshare") is None:
        return "no `unshare` on this machine"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"`unshare -n` is not permitted here ({probe.stderr.strip()})"


OFFLINE_SKIP = pytest.mark.skipif(_no_network_available() is not None, reason=str(_no_network_available()))
SMALL = "finetune.rl.runtime.num_rounds=1,sampler.num_inference_steps=4,pretrained_samples.images_per_prompt=2"


def _run_without_network(project, *args: str) -> None:
    bare = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(project)), "OMP_NUM_THREADS": "2"}
    result = subprocess.run(["unshare", "-n", "kedro", "run", *args, "--params", SMALL], cwd=project, env=bare,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@OFFLINE_SKIP
def test_make_runs_command_succeeds_without_any_network(tmp_path):
    project = copy_project(tmp_path, data=("data/01_raw", "data/06_models/shapes_base"))
    _run_without_network(project, "--pipelines", "finetune")  # `make run`, one round
    assert (project / "data/06_models/lora/pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
@OFFLINE_SKIP
def test_the_default_run_succeeds_without_any_network(tmp_path):
    project = copy_project(tmp_path, data=("data/01_raw", "data/06_models/shapes_base"))
    _run_without_network(project)  # every pipeline of `kedro run`: prompts → pretrained → finetune → evaluate
    assert (project / "data/08_reporting/metrics.json").is_file()
    assert (project / "data/06_models/lora/pytorch_lora_weights.safetensors").is_file()

"""Fault injection: `kedro run --pipelines finetune` killed with SIGKILL, then rerun, ends with exactly the
LoRA of an uninterrupted run, and no partial file is ever taken for a complete one.

CI runs one kill (mid-run) and its resume; `pytest -m slow tests/test_kill.py` kills at six points, each
on a fresh copy: three random times, while the first and the second checkpoint folder are being written,
and while the final LoRA is being written. The image sets of `pretrained` (and `evaluate`, the same
dataset class) are killed while being written, the first time and when replacing a complete set.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import BIN, OFFLINE_ENV, copy_project

ROUNDS = 3
PARAMS = (
    f"finetune.rl.runtime.num_rounds={ROUNDS},finetune.rl.runtime.checkpoint_every=1,sampler.num_inference_steps=4,"
    "finetune.rl.rollout.g_batch=8,finetune.rl.policy.p_batch=8,finetune.rl.policy.accum=1,finetune.rl.runtime.kl_report_trajectories=1"
)
# the same thread count for every run (bitwise comparable); MLflow's file store, which a fresh copy opens
# without the sqlite store's seconds of migrations (tracking is not what these tests kill)
ENV = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MLFLOW_ALLOW_FILE_STORE": "true"}


def _project(tmp_path: Path) -> Path:
    project = copy_project(tmp_path, data=("data/01_raw", "data/06_models/shapes_base"))
    (project / "conf/local/mlflow.yml").write_text(
        (project / "conf/base/mlflow.yml").read_text().replace("sqlite:///mlflow.db", "mlruns"))
    return project


def _command() -> list[str]:
    return [str(BIN / "kedro"), "run", "--pipelines", "finetune", "--params", PARAMS]


def _finish(project: Path, command: list[str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command or _command(), cwd=project, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _lora(project: Path) -> dict:
    return load_file(project / "data/06_models/lora/pytorch_lora_weights.safetensors")


def _kill_when(project: Path, ready, timeout: float = 300, command: list[str] | None = None) -> bool:
    """Start the run, SIGKILL it as soon as ``ready(project)`` holds; False if it finished first."""
    process = subprocess.Popen(command or _command(), cwd=project, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready(project):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _checkpoints(project: Path) -> Path:
    return project / "data/06_models/checkpoints"


def _rounds_saved(project: Path) -> int:
    return len(list(_checkpoints(project).glob("run-*/round_*")))


def _writing_a_checkpoint(project: Path) -> bool:
    return any(_checkpoints(project).glob("run-*/.tmp_round_*/lora.safetensors"))


def _writing_the_lora(project: Path) -> bool:
    return any((project / "data/06_models").glob(".lora.tmp-*"))


def _assert_no_partial_file_accepted(project: Path, result: subprocess.CompletedProcess) -> None:
    log = result.stdout + result.stderr
    assert "Resuming DPOK" in log or "training afresh" in log or "round 1/" in log
    for folder in _checkpoints(project).glob("run-*/round_*"):
        assert (folder / "state.json").is_file(), folder  # every round_* folder complete
    assert not list(_checkpoints(project).glob("run-*/.tmp_round_*"))
    assert not list((project / "data/06_models").glob(".lora.*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    project = _project(tmp_path_factory.mktemp("uninterrupted"))
    _finish(project)
    return _lora(project)


def _assert_same_lora(project: Path, reference: dict) -> None:
    lora = _lora(project)
    assert lora.keys() == reference.keys()
    worst = max(float((lora[k] - reference[k]).abs().max()) for k in lora)
    assert worst <= 1e-6, worst


def test_a_run_killed_mid_training_resumes_to_the_same_lora(tmp_path, reference):
    project = _project(tmp_path)
    assert _kill_when(project, lambda p: _rounds_saved(p) >= 1), "the run ended before it could be killed"
    assert not (project / "data/06_models/lora").exists()  # nothing final yet
    result = _finish(project)
    assert "Resuming DPOK" in result.stdout + result.stderr
    _assert_no_partial_file_accepted(project, result)
    _assert_same_lora(project, reference)


KILL_POINTS = {
    "early, at a random time": ("random", 0),
    "mid-run, at a random time": ("random", 1),
    "late, at a random time": ("random", 2),
    "while a checkpoint is written": ("checkpoint", None),
    "while the second checkpoint is written": ("second checkpoint", None),
    "while the final LoRA is written": ("lora", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_any_point_then_a_rerun_gives_the_uninterrupted_lora(point, tmp_path, reference):
    """Each point on a fresh copy: killed there, rerun to the end, the same LoRA as without the kill."""
    project = _project(tmp_path)
    kind, index = KILL_POINTS[point]
    if kind == "random":  # seconds after the start: imports and model loading take ~10 s, a round ~1-2 s
        at = time.monotonic() + random.Random(index).uniform(8.0, 16.0) + 3 * index
        ready = lambda p: time.monotonic() >= at  # noqa: E731
    elif kind == "checkpoint":
        ready = _writing_a_checkpoint
    elif kind == "second checkpoint":
        ready = lambda p: _rounds_saved(p) >= 1 and _writing_a_checkpoint(p)  # noqa: E731
    else:
        ready = _writing_the_lora
    killed = _kill_when(project, ready)
    print(f"{point}: {'killed' if killed else 'finished before the kill'}")
    assert killed or kind == "random", f"could not kill {point}"
    result = _finish(project)
    _assert_no_partial_file_accepted(project, result)
    _assert_same_lora(project, reference)


PRETRAINED = [
    str(BIN / "kedro"), "run", "--pipelines", "pretrained_samples", "--params",
    "pretrained_samples.images_per_prompt=4,pretrained_samples.batch_size=8,sampler.num_inference_steps=4",
]


@pytest.mark.slow  # 90 s; CI kills the same dataset class in tests/test_image_set.py
def test_a_killed_image_set_write_never_leaves_half_a_set_where_the_next_step_looks(tmp_path):
    import pandas as pd
    from PIL import Image

    from dpok.evaluation.manifest import check_saved, partition_id

    project = _project(tmp_path)
    output = project / "data/07_model_output"
    samples, manifest_file = output / "pretrained_samples", output / "pretrained_manifest.parquet"

    def writing(_: Path) -> bool:
        return any(output.glob(".pretrained_samples.tmp-*/*.png"))

    assert _kill_when(project, writing, command=PRETRAINED), "the run finished before it was killed"
    assert not samples.exists() and not manifest_file.exists()  # nothing a later step or `dvc` could take
    _finish(project, PRETRAINED)
    complete = {p.name: p.read_bytes() for p in samples.iterdir()}
    manifest = pd.read_parquet(manifest_file)
    assert len(complete) == len(manifest) == 4 * manifest["prompt"].nunique()
    # Killed while replacing a complete set: the complete set stays as it was, beside the manifest it matches.
    assert _kill_when(project, writing, command=PRETRAINED)
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == complete
    check_saved(pd.read_parquet(manifest_file), {partition_id(p.name): Image.open(p) for p in samples.iterdir()},
                "base-model")
    _finish(project, PRETRAINED)
    assert not list(output.glob(".pretrained_samples.*"))  # the killed write's leftovers are gone
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == complete  # same seeds, same images

"""An image set and a LoRA pushed to a local directory remote and pulled back, byte for byte."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpok.models import attach_lora, build_tiny_pipeline, load_lora, save_lora

DVC = str(Path(sys.executable).with_name("dvc"))
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(*args, cwd):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not Path(DVC).exists(), reason="dvc is not installed in this environment")
def test_push_and_pull_an_image_set_and_a_lora(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    run("git", "init", "-q", cwd=repo)
    run(DVC, "init", "-q", cwd=repo)
    run(DVC, "remote", "add", "-d", "local", str(remote), cwd=repo)

    images = repo / "data/07_model_output/pretrained_samples"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"p0000_s{i:02d}.png")
    pipeline = build_tiny_pipeline(seed=0)
    params = attach_lora(pipeline.unet, 4, 4, ["to_q", "to_v", "conv1"])
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    lora = repo / "data/06_models/lora"
    save_lora(pipeline.unet, lora)
    before = {"images": digest(images), "lora": digest(lora)}

    run(DVC, "add", "-q", "data/07_model_output/pretrained_samples", "data/06_models/lora", cwd=repo)
    assert "/pretrained_samples" in (repo / "data/07_model_output/.gitignore").read_text()
    run(DVC, "push", "-q", cwd=repo)
    shutil.rmtree(images)
    shutil.rmtree(lora)
    shutil.rmtree(repo / ".dvc/cache")
    run(DVC, "pull", "-q", cwd=repo)

    assert {"images": digest(images), "lora": digest(lora)} == before
    fresh = build_tiny_pipeline(seed=0)
    load_lora(fresh, lora)  # the pulled LoRA still loads into a stock pipeline

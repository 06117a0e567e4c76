"""TRL 0.22's DDPOTrainer on our model and prompts, for ``python -m dpok.bench --trl`` (the peer benchmark).

    python scripts/bench_trl.py REQUEST.json

Run with the project's Python it creates ``.bench/trl`` (a venv that sees the project's packages and adds
``trl==0.22.2``, the last release with DDPO, and what it needs), then runs itself there. TRL never
becomes a project dependency. REQUEST (written by dpok.bench) names the model folder, prompts, sampler
settings and the work of one DPOK round; the trainer gets the same: ``g_batch`` images per epoch with the
same steps, CFG and η, and the same number of transition updates in the same number of optimiser steps
(DDPO trains on a fraction of each trajectory's timesteps: ``transitions / g_batch`` of them, and
``transitions_per_step / that`` trajectories per step). The reward is the project's shapes judge. Writes
``{"epoch_seconds": median over epochs 2.., "epochs": [...], ...}`` to REQUEST's ``out``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".bench" / "trl"
TRL = "trl==0.22.2"


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """``.bench/trl``: the project's site-packages visible (torch, diffusers, dpok), TRL installed on top."""
    python = _venv_python()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        ours = sysconfig.get_paths()["purelib"]
        (Path(purelib) / "dpok_project.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    installed = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True,
                               text=True)
    if installed.returncode != 0 or installed.stdout.strip() != TRL.split("==")[1]:
        subprocess.run([str(python), "-m", "pip", "install", "-q", TRL], check=True)
    return python


def run(request: dict) -> dict:
    import numpy as np
    import torch
    from accelerate import PartialState

    torch.set_num_threads(request["threads"])
    PartialState(cpu=not torch.cuda.is_available())  # before the pipeline: TRL's Accelerator then runs on CPU
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from dpok.rewards import weighted_reward

    judge = weighted_reward({"shapes_judge": 1.0})
    timesteps = request["transitions"] // request["g_batch"]
    prompts = request["prompts"]
    state = {"next": 0}

    def prompt_function():
        prompt = prompts[state["next"] % len(prompts)]
        state["next"] += 1
        return prompt, {}

    def reward_function(images, prompts, metadata):
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return torch.as_tensor(np.asarray(judge(pixels, list(prompts)), dtype=np.float32)), {}

    with tempfile.TemporaryDirectory() as logdir:
        config = DDPOConfig(
            num_epochs=request["epochs"], seed=request["seed"], log_with=None, logdir=logdir,
            project_kwargs={"project_dir": logdir}, mixed_precision="no", save_freq=10**9,
            sample_num_steps=request["steps"], sample_eta=request["eta"],
            sample_guidance_scale=request["guidance_scale"], sample_batch_size=request["g_batch"],
            sample_num_batches_per_epoch=1, train_batch_size=request["transitions_per_step"] // timesteps,
            train_gradient_accumulation_steps=1, train_num_inner_epochs=1,
            train_timestep_fraction=timesteps / request["steps"], train_learning_rate=request["learning_rate"],
            train_clip_range=request["clip_range"], train_max_grad_norm=request["max_grad_norm"],
            per_prompt_stat_tracking=True, async_reward_computation=False,
        )
        pipeline = DefaultDDPOStableDiffusionPipeline(request["model"], use_lora=True)
        pipeline.sd_pipeline.set_progress_bar_config(disable=True)
        trainer = DDPOTrainer(config, reward_function, prompt_function, pipeline)
        epochs, global_step = [], 0
        for epoch in range(request["epochs"]):
            tick = time.perf_counter()
            global_step = trainer.step(epoch, global_step)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            epochs.append(time.perf_counter() - tick)
    return {
        "trl": TRL.split("==")[1], "epochs": epochs, "epoch_seconds": statistics.median(epochs[1:] or epochs),
        "images_per_epoch": request["g_batch"], "timesteps_trained": timesteps,
        "transitions_per_epoch": timesteps * request["g_batch"], "optimiser_steps": global_step,
        "lora": "rank 4 on to_q/to_k/to_v/to_out.0 (TRL's fixed choice)",
    }


def main() -> None:
    request_file = Path(sys.argv[1])
    if Path(sys.prefix).resolve() != VENV.resolve():
        python = ensure_venv()
        os.execv(str(python), [str(python), __file__, str(request_file)])
    request = json.loads(request_file.read_text())
    result = run(request)
    Path(request["out"]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

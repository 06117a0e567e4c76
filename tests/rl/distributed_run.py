"""A few DPOK rounds on a saved tiny pipeline, in one process or under `accelerate launch` (the tests'
multi-process driver; tests/rl/test_distributed.py).

    accelerate launch --multi_gpu --num_processes 2 tests/rl/distributed_run.py MODEL OUT [options]
    python tests/rl/distributed_run.py MODEL OUT [options]

Every rank writes ``OUT/lora_rank<r>.safetensors`` (its LoRA at the end) and the main rank writes
``OUT/history.json``; checkpoints go to ``OUT/checkpoints``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers

from dpok.models import load_pipeline  # noqa: E402
from dpok.models.lora import lora_state_dict  # noqa: E402
from dpok.rl import FinetuneConfig, train_dpok  # noqa: E402
from dpok.rl.distributed import Ranks, start_ranks  # noqa: E402
from helpers import finetune_config  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green circle on the left"]


def brightness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


def config(rounds: int) -> FinetuneConfig:
    """Groups sharing x_T, group-relative rewards and V_φ on x̂_0 and its reward: every shared path runs.
    The chunk sizes are those two processes use by default, so one process computes the same pieces."""
    return finetune_config({"seed": 3, "runtime.num_rounds": rounds, "rollout.g_batch": 8, "rollout.trajectories_per_prompt": 2, "sampler.num_inference_steps": 4, "policy.p_batch": 8, "policy.accum": 2, "policy.p_step": 2, "policy.buffer_size": 64, "value.batch_size": 8, "value.steps": 2, "runtime.kl_report_trajectories": 3, "runtime.checkpoint_every": 1, "runtime.keep_last_checkpoints": 2, "policy.learning_rate": 1e-2, "runtime.sample_batch_size": 4, "runtime.update_batch_size": 4})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fail-rank", type=int, default=-1, help="this rank's reward model raises ...")
    parser.add_argument("--fail-after", type=int, default=3, help="... after this many calls")
    parser.add_argument("--no-grad-sync", action="store_true", help="break the all-reduce (the test's control)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # each process of a launch has one thread; the one-process reference too
    ranks, device = start_ranks("cpu")
    if args.no_grad_sync:
        Ranks.sum_gradients = lambda self, parameters: None
    out = Path(args.out)
    calls = {"n": 0}

    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        calls["n"] += 1
        if ranks.rank == args.fail_rank and calls["n"] > args.fail_after:
            raise RuntimeError(f"rank {ranks.rank}: reward model failed")
        return brightness(images, prompts)

    pipeline = load_pipeline(args.model, device=device or "cpu")
    result = train_dpok(pipeline, PROMPTS, reward, config(args.rounds), out / "checkpoints", progress=False,
                        ranks=ranks)
    lora = {k: v.contiguous() for k, v in lora_state_dict(pipeline.unet).items()}
    save_file(lora, str(out / f"lora_rank{ranks.rank}.safetensors"))
    if ranks.is_main:
        (out / "history.json").write_text(json.dumps(result.history))
    print(f"rank {ranks.rank} of {ranks.world_size}: done", file=sys.stderr)


if __name__ == "__main__":
    main()

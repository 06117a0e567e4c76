"""Rewards in tiny training runs: the shapes judge behind the reference server trains exactly as in process,
a server killed mid-run stops the run with a named error and a rerun resumes with nothing lost, and a
mixture reports each term."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dpok.rewards import get_reward_fn, weighted_reward
from dpok.rewards.remote import RewardServerUnavailable
from dpok.rl import list_checkpoints, train_dpok
from helpers import OFFLINE_ENV, ROOT, finetune_config

PROMPTS = ["a red circle", "a blue square", "a green circle on the left"]
# the trainer tests' small configuration (tests/rl/conftest.py), three rounds with a checkpoint each
SMALL = {
    "seed": 0, "sampler.num_inference_steps": 4, "rollout.g_batch": 4, "rollout.trajectories_per_prompt": 1,
    "rollout.share_initial_noise": False, "policy.p_batch": 8, "policy.accum": 2, "policy.p_step": 2,
    "policy.buffer_size": 64, "value.batch_size": 16, "value.steps": 2, "advantage.normalisation": "none",
    "runtime.num_rounds": 3, "runtime.kl_report_trajectories": 2, "runtime.checkpoint_every": 1,
    "runtime.keep_last_checkpoints": 3,
}


@pytest.fixture(scope="module")
def base_pipeline():
    from dpok.models import build_tiny_pipeline

    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def in_process(base_pipeline, tmp_path_factory):
    """The uninterrupted run with the shapes judge scored in process."""
    return train_dpok(copy.deepcopy(base_pipeline), PROMPTS, get_reward_fn("shapes_judge"), finetune_config(SMALL),
                      tmp_path_factory.mktemp("in_process"), progress=False)


def _same_lora(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)


def _start_server(port: int) -> subprocess.Popen:
    """``python -m dpok.rewards.serve --reward shapes_judge`` in its own process, once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dpok.rewards.serve", "--reward", "shapes_judge", "--port", str(port)],
        cwd=ROOT, env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("serving reward 'shapes_judge' on http://127.0.0.1:"), line
    return process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_judge_through_the_server_trains_the_same_lora(base_pipeline, in_process, tmp_path):
    port = _free_port()
    server = _start_server(port)
    try:
        reward = get_reward_fn("http", url=f"http://127.0.0.1:{port}/", retries=0)
        remote = train_dpok(copy.deepcopy(base_pipeline), PROMPTS, reward, finetune_config(SMALL), tmp_path,
                            progress=False)
    finally:
        server.kill()
        server.wait()
    for a, b in zip(remote.history, in_process.history):
        assert [a[k] for k in ("reward_mean", "reward_std", "reward_min", "reward_max")] == \
               [b[k] for k in ("reward_mean", "reward_std", "reward_min", "reward_max")]
    assert remote.reward_log == in_process.reward_log  # every trajectory's reward, exactly
    _same_lora(remote.lora_state, in_process.lora_state)
    assert any(v.abs().max() > 0 for k, v in remote.lora_state.items() if "lora_B" in k)  # it trained


def test_a_killed_server_stops_the_run_and_the_rerun_resumes_with_nothing_lost(base_pipeline, in_process, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = _start_server(port)

    def kill_after_round_two(round_number: int, metrics: dict) -> None:
        if round_number == 2:
            server.kill()
            server.wait()

    try:
        with pytest.raises(RewardServerUnavailable, match=r"did not answer.*after 2 attempt\(s\).*resumes from its last checkpoint"):
            train_dpok(copy.deepcopy(base_pipeline), PROMPTS, get_reward_fn("http", url=url, retries=1, backoff_s=0),
                       finetune_config(SMALL), tmp_path, on_round=kill_after_round_two, progress=False)
    finally:
        server.kill()
        server.wait()
    # rounds 1 and 2 are kept; round 3 stopped before its update: no checkpoint, no partial folder
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round_000001", "round_000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_000001", "round_000002"]

    server = _start_server(port)
    try:
        resumed = train_dpok(copy.deepcopy(base_pipeline), PROMPTS, get_reward_fn("http", url=url),
                             finetune_config(SMALL), tmp_path, progress=False)
    finally:
        server.kill()
        server.wait()
    assert resumed.resumed_from == tmp_path / "round_000002"
    assert resumed.reward_log == in_process.reward_log
    assert [row["reward_mean"] for row in resumed.history] == [row["reward_mean"] for row in in_process.history]
    _same_lora(resumed.lora_state, in_process.lora_state, atol=1e-6)


def test_a_mixture_reports_each_term_unweighted(base_pipeline, tmp_path):
    from dpok.evaluation.history import learning_curves

    mixture = weighted_reward({"shapes_judge": 1.0, "jpeg_compressibility": 0.5})
    result = train_dpok(copy.deepcopy(base_pipeline), PROMPTS, mixture, finetune_config({**SMALL, "runtime.num_rounds": 2}),
                        tmp_path, progress=False)
    for row in result.history:
        assert {"reward_mean/shapes_judge", "reward_std/shapes_judge", "reward_mean/jpeg_compressibility",
                "reward_std/jpeg_compressibility"} <= set(row)
        assert row["reward_mean"] == pytest.approx(
            row["reward_mean/shapes_judge"] + 0.5 * row["reward_mean/jpeg_compressibility"])
    rewards = pd.DataFrame(result.reward_log, columns=["round", "prompt", "reward"])
    assert rewards.groupby("round")["reward"].mean().tolist() == pytest.approx([r["reward_mean"] for r in result.history])
    # both terms are seen, on their own scales: the judge in [0, 1] and varying, −(JPEG kB) below 0
    assert result.history[0]["reward_std/shapes_judge"] > 0 and result.history[0]["reward_mean/jpeg_compressibility"] < 0
    single = train_dpok(copy.deepcopy(base_pipeline), PROMPTS, weighted_reward({"shapes_judge": 1.0}),
                        finetune_config({**SMALL, "runtime.num_rounds": 1}), tmp_path / "single", progress=False)
    assert not any("/" in key for key in single.history[0])  # one term: the total says it all
    image = learning_curves(pd.DataFrame(result.history))
    panels_without_terms = learning_curves(pd.DataFrame(single.history * 2).assign(round=[1, 2]))
    assert image.height > panels_without_terms.height or image.width > panels_without_terms.width


def test_a_mixtures_terms_are_its_parts():
    from dpok.rewards import reward_term_metrics
    from dpok.world import render, sample_scene

    rng = np.random.default_rng(0)
    images = np.stack([render(sample_scene(p, rng)) for p in PROMPTS])
    judge, quality = get_reward_fn("shapes_judge")(images, PROMPTS), get_reward_fn("shapes_quality")(images, PROMPTS)
    mixture = weighted_reward({"shapes_judge": 1.0, "shapes_quality": 0.5})
    mixture(images, PROMPTS)  # outside a recording: not kept
    with reward_term_metrics(mixture) as metrics:
        total = np.concatenate([mixture(images[:2], PROMPTS[:2]), mixture(images[2:], PROMPTS[2:])])
        assert metrics == {}  # filled in when the block ends
    np.testing.assert_allclose(total, judge + 0.5 * quality, rtol=0, atol=1e-12)
    assert metrics == pytest.approx({"reward_mean/shapes_judge": judge.mean(), "reward_std/shapes_judge": judge.std(),
                                     "reward_mean/shapes_quality": quality.mean(),
                                     "reward_std/shapes_quality": quality.std()})
    with pytest.raises(ValueError, match="outside the shapes-world grammar"), reward_term_metrics(mixture) as failed:
        mixture(images[:1], ["a purple elephant"])
    assert failed == {}
    with reward_term_metrics(weighted_reward({"shapes_judge": 2.0})) as single:
        pass
    assert single == {}

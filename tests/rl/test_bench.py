"""`python -m dpok.bench`: its measurements on the tiny pipeline (CI), the command on the shipped model and
the TRL comparison (slow; TRL needs network once)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpok.bench import PHASES, bench_round, bench_sampler
from helpers import OFFLINE_ENV, ROOT


def test_sampler_and_round_measurements_on_a_tiny_pipeline(make_pipeline, prompts, reward_fn, small_config):
    config = small_config({"rollout.g_batch": 4, "policy.p_step": 2, "policy.accum": 2, "policy.p_batch": 8})
    sampler = bench_sampler(make_pipeline(), prompts, config, repeats=2)
    assert sampler["images"] == 4 and sampler["stock_seconds"] > 0 and sampler["sampler_seconds"] > 0
    assert sampler["ratio"] == pytest.approx(sampler["sampler_seconds"] / sampler["stock_seconds"])
    round_ = bench_round(make_pipeline(), prompts, reward_fn, config, rounds=3)
    assert set(round_["phase_seconds"]) == set(PHASES) and all(v >= 0 for v in round_["phase_seconds"].values())
    assert round_["round_seconds"] >= round_["phase_seconds"]["policy"] > 0
    assert round_["policy_transitions_per_round"] == 2 * 2 * 8
    assert round_["policy_transitions_per_second"] == pytest.approx(32 / round_["phase_seconds"]["policy"])


def test_rounds_below_two_are_refused():
    from dpok.bench import main

    with pytest.raises(SystemExit):
        main(["--rounds", "1"])


@pytest.mark.slow
def test_the_command_on_the_shipped_model(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "dpok.bench", "--rounds", "2", "--repeats", "1", "--out", str(out)],
                          cwd=ROOT, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["sampler"]["ratio"] > 0 and result["round"]["round_seconds"] > 0
    assert result["peak_memory_mib"] > 100


@pytest.mark.slow
def test_trl_ddpo_does_the_same_work(tmp_path):
    """Creates .bench/trl with TRL 0.22 (network on first use) and times 2 DDPO epochs on the shipped model."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "dpok.bench", "--rounds", "2", "--repeats", "1", "--trl",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["trl"]["transitions_per_epoch"] == result["round"]["policy_transitions_per_round"]
    assert result["trl"]["optimiser_steps"] == 2 * result["round"]["policy_steps_per_round"]
    assert result["dpok_round_over_trl_epoch"] > 0

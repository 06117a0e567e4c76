"""`python -m dpok.bench`: its measurements on the tiny pipeline (CI), the command on the shipped model and
the TRL comparison (slow; TRL needs network once)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpok.bench import PHASES, bench_fast_path, bench_round, bench_sampler, fast_path, fp32_eager
from dpok.devices import cpu_matmul_dtypes
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


def test_fast_path_against_fp32_eager_on_a_tiny_pipeline(make_pipeline, prompts, reward_fn, small_config):
    config = small_config({"rollout.g_batch": 4, "policy.p_step": 1, "policy.accum": 1, "policy.p_batch": 8})
    pipeline = make_pipeline()
    result = bench_fast_path(pipeline, prompts, reward_fn, config, rounds=2, gemm_size=256)
    has_bf16 = "bfloat16" in cpu_matmul_dtypes()  # where auto chooses bf16 (AMX or AVX512-BF16)
    assert result["precision"]["name"] == ("bf16" if has_bf16 else "fp32") and result["precision"]["compile"] is False
    if has_bf16:
        baseline = result["round_fp32_eager"]["round_seconds"]
        assert result["speedup_over_fp32_eager"] == pytest.approx(baseline / result["round"]["round_seconds"])
    else:
        assert result["round_fp32_eager"] is None and result["speedup_over_fp32_eager"] == 1.0
    assert result["first_update_max_abs_log_ratio"] <= 1e-6 and result["first_update_max_abs_log_ratio_fp32"] <= 1e-6
    flops = result["unet_flops"]
    # per round: (4 sampled + 2 KL-report trajectories) x 4 steps of guided predictions, 8 trained transitions
    assert flops["per_round"] == 6 * 4 * flops["per_guided_prediction"] + 8 * flops["per_trained_transition"]
    # a trained transition: forward, backward (input gradients, about the forward again: the frozen weights get
    # none) and the reference forward (kl.weight > 0)
    assert 2 * flops["per_guided_prediction"] < flops["per_trained_transition"] < 4 * flops["per_guided_prediction"]
    assert result["unet_flops_per_second"] == pytest.approx(flops["per_round"] / result["round"]["round_seconds"])
    assert result["gemm_peak_flops_per_second"] > 0 and 0 < result["fraction_of_gemm_peak"] < 1
    assert "dpok" not in (getattr(pipeline.unet, "peft_config", None) or {})  # every measurement on a copy


@pytest.mark.skipif("bfloat16" not in cpu_matmul_dtypes(), reason="this CPU has no bfloat16 matmul")
def test_a_named_precision_is_the_fast_path(make_pipeline, prompts, reward_fn, small_config):
    config = small_config({"rollout.g_batch": 4, "policy.p_step": 1, "policy.accum": 1, "policy.p_batch": 8,
                           "runtime.precision": "bf16"})
    result = bench_fast_path(make_pipeline(), prompts, reward_fn, config, rounds=2, overrides=["runtime.precision=bf16"],
                             gemm_size=256)
    assert result["precision"]["name"] == "bf16" and result["round_fp32_eager"]["round_seconds"] > 0
    assert result["speedup_over_fp32_eager"] == pytest.approx(
        result["round_fp32_eager"]["round_seconds"] / result["round"]["round_seconds"])
    assert result["first_update_max_abs_log_ratio"] <= 1e-6


def test_the_fast_path_is_auto_unless_named():
    from helpers import finetune_config

    config = finetune_config()
    assert (fast_path(config).runtime.precision, fast_path(config).runtime.compile) == ("auto", "auto")
    named = fast_path(config, ["runtime.precision=bf16"]).runtime
    assert (named.precision, named.compile) == ("fp32", "auto")  # named: left as the configuration says
    assert (fp32_eager(fast_path(config)).runtime.precision, fp32_eager(config).runtime.compile) == ("fp32", False)


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

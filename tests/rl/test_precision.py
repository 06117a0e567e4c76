"""runtime.precision and runtime.compile: what `auto` chooses, what is refused at start-up, the exact ratio in
every precision, and what the half-precision path leaves as it was."""

from __future__ import annotations

import pytest
import torch

import dpok.rl.precision as precision_module
from dpok.bench import first_update_log_ratio, fresh_round_context
from dpok.devices import cpu_matmul_dtypes
from dpok.rl import train_dpok
from dpok.rl.precision import resolve_precision
from dpok.rl.rollout import rollout
from dpok.rl.sampling import guided_noise_prediction
from dpok.rl.update import rescoring_log_ratios
from helpers import finetune_config

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif("bfloat16" not in cpu_matmul_dtypes(), reason="this CPU has no bfloat16 matmul")


def _runtime(**settings):
    return finetune_config({f"runtime.{k}": v for k, v in settings.items()}).runtime


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU multiplies these half dtypes in hardware (``{}``: neither)."""

    def pretend(found: dict[str, str]) -> None:
        monkeypatch.setattr(precision_module, "cpu_matmul_dtypes", lambda: dict(found))

    return pretend


def test_auto_chooses_bf16_only_on_a_cpu_with_bf16_matmul(cpu_with):
    cpu_with({"bfloat16": "AMX"})
    chosen = resolve_precision(_runtime(precision="auto", compile="auto"), CPU, torch.float32)
    assert (chosen.name, chosen.dtype, chosen.compile, chosen.holds_half_weights) == ("bf16", torch.bfloat16, False, True)
    assert "AMX" in chosen.reason and chosen.fixed_call_shape
    # AVX512-BF16 alone: a whole round measured 1.16x float32's speed on the shapes model (docs/throughput.md)
    cpu_with({"bfloat16": "AVX512-BF16"})
    chosen = resolve_precision(_runtime(precision="auto"), CPU, torch.float32)
    assert (chosen.name, chosen.dtype, chosen.fixed_call_shape) == ("bf16", torch.bfloat16, True)
    assert "AVX512-BF16" in chosen.reason
    assert resolve_precision(_runtime(precision="bf16"), CPU, torch.float32).name == "bf16"
    cpu_with({})
    chosen = resolve_precision(_runtime(precision="auto"), CPU, torch.float32)
    assert (chosen.name, chosen.dtype, chosen.fixed_call_shape) == ("fp32", None, False)
    assert "neither AMX nor AVX512-BF16" in chosen.reason


def test_bf16_without_bf16_matmul_is_refused_at_start_up(cpu_with, make_pipeline, prompts, reward_fn, small_config,
                                                         tmp_path):
    cpu_with({})
    message = r"finetune.rl.runtime.precision is bf16 but this CPU has no bfloat16 .* auto would choose fp32 here"
    with pytest.raises(ValueError, match=message):
        resolve_precision(_runtime(precision="bf16"), CPU, torch.float32)
    with pytest.raises(ValueError, match=message):  # before any round: nothing written
        train_dpok(make_pipeline(), prompts, reward_fn, small_config({"runtime.precision": "bf16"}), tmp_path,
                   progress=False)
    assert not any(tmp_path.iterdir())
    # fp16 on such a CPU runs (a stand-in for the GPU recipe), with a warning saying what auto would do
    fp16 = resolve_precision(_runtime(precision="fp16"), CPU, torch.float32)
    assert fp16.loss_scaling and "emulated" in fp16.warning and "auto would choose fp32" in fp16.warning


def test_compile_without_a_compiler_is_refused_at_start_up(monkeypatch):
    monkeypatch.setattr(precision_module, "cpp_compiler", lambda: None)
    with pytest.raises(ValueError, match=r"finetune.rl.runtime.compile is true but torch.compile needs a C\+\+ "
                                         r"compiler .* auto would not compile here"):
        resolve_precision(_runtime(compile=True), CPU, torch.float32)
    assert resolve_precision(_runtime(compile="auto"), CPU, torch.float32).compile is False


def test_fixed_call_shape_pads_and_gives_each_row_its_own_prediction(make_pipeline):
    pipeline = make_pipeline()
    unet = pipeline.unet
    shapes = []
    unet.register_forward_pre_hook(lambda module, args: shapes.append(args[0].shape[0]))
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(7, 4, 4, 4, generator=generator)
    timesteps = torch.tensor([901, 801, 701, 601, 501, 401, 301])
    cond, uncond = torch.randn(7, 77, 32, generator=generator), torch.randn(7, 77, 32, generator=generator)
    with torch.no_grad():
        whole = guided_noise_prediction(unet, latents, timesteps, cond, uncond, 3.0)
        shapes.clear()
        padded = guided_noise_prediction(unet, latents, timesteps, cond, uncond, 3.0, call_rows=3)
    assert shapes == [6, 6, 6]  # 3 + 3 + (1 padded to 3) latents, each with its CFG twin
    torch.testing.assert_close(padded, whole, rtol=1e-4, atol=1e-5)  # other call shapes, other float sums
    assert not torch.equal(padded[3], padded[4])  # rows not mixed up


def _perturbed_lora(context) -> None:
    """A trained-looking adapter (B ≠ 0), so that the LoRA path is part of what must agree."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in context.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
@pytest.mark.parametrize("chunks", [{}, {"runtime.sample_batch_size": 3, "runtime.update_batch_size": 5}])
def test_the_ratio_is_exact_before_an_update_on_a_whole_round(make_pipeline, prompts, reward_fn, small_config,
                                                               precision, chunks):
    """Every transition of a round, rescored by the update's own computation in its micro-batches, has the
    sampler's log-probability to the last bit: |log ρ| = 0 (issue 29: ≤ 1e-6), with chunks that do not divide."""
    config = small_config({"runtime.precision": precision, "rollout.g_batch": 8, **chunks})
    context = fresh_round_context(make_pipeline(), prompts, reward_fn, config)
    _perturbed_lora(context)
    _, _, trajectory = rollout(context, 1)
    gaps = rescoring_log_ratios(context, trajectory)
    assert gaps.shape == (8 * config.sampler.num_inference_steps,)
    assert float(gaps.max()) <= 1e-6
    # and the check can fail: a policy that changed after sampling is seen
    with torch.no_grad():
        for name, parameter in context.unet.named_parameters():
            if "lora_B" in name:
                parameter.mul_(1.5)
    assert float(rescoring_log_ratios(context, trajectory).max()) > 1e-4


def test_first_update_log_ratio_is_what_the_bench_reports(make_pipeline, prompts, reward_fn, small_config):
    pipeline = make_pipeline()
    assert first_update_log_ratio(pipeline, prompts, reward_fn, small_config()) <= 1e-6
    assert "dpok" not in (getattr(pipeline.unet, "peft_config", None) or {})  # it worked on a copy


@needs_bf16
def test_bf16_gives_back_the_float32_weights_bit_for_bit(make_pipeline, prompts, reward_fn, small_config, tmp_path):
    pipeline = make_pipeline()
    before = {name: tensor.clone() for name, tensor in pipeline.unet.state_dict().items()}
    seen: list[torch.dtype] = []
    pipeline.unet.conv_in.register_forward_hook(lambda module, args, output: seen.append(module.weight.dtype))
    result = train_dpok(pipeline, prompts, reward_fn, small_config({"runtime.num_rounds": 1, "runtime.precision": "bf16"}),
                        tmp_path, progress=False)
    assert set(seen) == {torch.bfloat16}  # held in bfloat16 while the UNet ran
    after = {name.replace(".base_layer", ""): tensor for name, tensor in pipeline.unet.state_dict().items()
             if "lora_" not in name}
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)  # the originals, not rounded ones
    assert all(v.dtype == torch.float32 for v in result.lora_state.values())

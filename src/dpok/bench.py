"""Speed benchmark of DPOK on the configured model: ``python -m dpok.bench`` (JSON out).

    python -m dpok.bench [--env local] [--model FOLDER] [--rounds 3] [--repeats 3] [--warmup 1]
                         [--device auto] [--threads N] [--set key=value ...] [--out PATH] [--trl | --sampler-only]

With the environment's model (or ``--model``), training prompts, reward and ``finetune.rl`` settings it
measures:

- ``sampler``: the stock ``StableDiffusionPipeline`` call against :func:`dpok.rl.sample_trajectories` on
  the same prompts, noise, steps, CFG and η (``rollout.g_batch`` images; after ``--warmup`` untimed calls of
  each, alternating so that drift in machine load hits both alike, ``--repeats`` timed calls of each);
  ``ratio`` = ours / stock of the medians (ours also keeps every latent and log-probability), with
  ``paired_ratio`` (median ratio of back-to-back calls) and ``min_ratio`` (ratio of the minima), which
  are steadier on a shared machine;
- ``round``: ``--rounds`` rounds of :func:`dpok.rl.train_dpok` (checkpoints in a temporary folder) on the
  fast path: ``runtime.precision`` and ``runtime.compile`` ``auto`` unless ``--set`` names them
  (``precision``: what they resolved to); the seconds of every phase (sampling, reward, KL report, buffer
  with V_φ's inputs, value steps, policy steps), median over the rounds after the first, and
  ``policy_transitions_per_second`` (p_step · accum · p_batch / policy seconds);
- ``round_fp32_eager``: the same rounds in float32, uncompiled (null when the fast path is that);
  ``speedup_over_fp32_eager`` = its median round / the fast path's;
- ``first_update_max_abs_log_ratio``: max |log ρ| over every transition of a round, rescored by the policy
  update's own computation before any update (0 when sampling and update compute the same arithmetic;
  ``first_update_max_abs_log_ratio_fp32`` the same in float32 eager);
- ``unet_flops_per_second``: the UNet work of a round (sampling, KL report, the policy steps' forward,
  backward and reference passes; counted by ``torch.utils.flop_counter``, padding not counted) over the
  fast path's median round; ``gemm_peak_flops_per_second``: the best of a square matmul in the fast path's
  dtype on this machine (``gemm_peak_fp32_flops_per_second`` in float32); ``fraction_of_gemm_peak``;
- ``peak_memory_mib``: the process's peak resident memory on CPU, peak allocated CUDA memory on a GPU;
- ``--trl``: TRL 0.22's ``DDPOTrainer`` (the last TRL with DDPO) doing the same work on the same model,
  prompts, sampler settings and number of transition updates, in its own virtual environment
  (``scripts/bench_trl.py`` creates ``.bench/trl`` and runs there; TRL is never a project dependency);
  ``dpok_round_over_trl_epoch`` = our median round / its median epoch. Needs network access once.

``--set`` overrides ``finetune.rl`` keys by their dotted path (``sampler.*`` the shared sampler; YAML
values), e.g. DDPO's objective for an engine-to-engine comparison: ``--set kl.weight=0 --set
value.enabled=false --set runtime.kl_report_trajectories=0 --set "lora.target_modules=[to_q,to_k,to_v,to_out.0]"``.

``--sampler-only`` measures ``sampler`` (and the peak memory) alone, without DPOK rounds, and writes
``data/08_reporting/bench_sampler.json`` unless ``--out`` says otherwise; e.g. another model and batch
size: ``python -m dpok.bench --sampler-only --model PIPELINE_FOLDER --set rollout.g_batch=32 --repeats 7``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("sampling", "reward", "kl_report", "buffer", "value", "policy")


def _timed(call) -> float:
    tick = time.perf_counter()
    call()
    return time.perf_counter() - tick


def _synchronised(call, device):
    import torch

    def run():
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def setting(env: str, overrides: list[str] = ()) -> dict[str, Any]:
    """The model folder, training prompts, reward and RL config of ``kedro run --env ENV`` (``overrides``:
    ``dotted.key=value`` under ``finetune.rl``, or ``sampler.KEY=value``, values in YAML)."""
    import yaml

    from dpok.config import project_config, with_overrides
    from dpok.pipelines.finetune.nodes import FinetuneRunConfig
    from dpok.prompts import PromptsConfig, load_prompt_table

    params = project_config("parameters", env)
    values = {key.strip(): yaml.safe_load(value) for key, _, value in (o.partition("=") for o in overrides)}
    sampler = {k.removeprefix("sampler."): v for k, v in values.items() if k.startswith("sampler.")}
    rl = {k: v for k, v in values.items() if not k.startswith("sampler.")}
    params["finetune"]["rl"] = with_overrides(params["finetune"]["rl"], rl, "finetune.rl")
    params["sampler"] = with_overrides(params["sampler"], sampler, "sampler")
    run = FinetuneRunConfig.from_params(params["finetune"], params["sampler"])
    table, _ = load_prompt_table(PromptsConfig.from_dict(params["prompts"]), root=ROOT)
    return {
        "model": str(ROOT / project_config("catalog", env)["base_model"]["path"]),
        "prompts": table.loc[table["split"] == run.train_split, "prompt"].tolist(),
        "run": run,
        "rl": run.rl,
    }


def bench_sampler(pipeline, prompts: list[str], config, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Stock pipeline call vs our sampler on the same noise (seconds: medians and minima of ``repeats``
    alternating calls after ``warmup`` untimed calls of each; ratios ours / stock)."""
    import torch

    from dpok.rl import sample_trajectories

    device = pipeline.unet.device
    batch = [prompts[i % len(prompts)] for i in range(config.rollout.g_batch)]

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(len(batch))]

    def stock():
        pipeline(batch, num_inference_steps=config.sampler.num_inference_steps, guidance_scale=config.sampler.guidance_scale,
                 eta=config.sampler.eta, generator=generators(), output_type="np")

    def ours():
        sample_trajectories(pipeline, batch, num_inference_steps=config.sampler.num_inference_steps,
                            guidance_scale=config.sampler.guidance_scale, eta=config.sampler.eta, generator=generators())

    stock, ours = _synchronised(stock, device), _synchronised(ours, device)
    with torch.no_grad():
        for _ in range(warmup):
            stock(), ours()
        stock_times, our_times = [], []
        for _ in range(repeats):  # alternating, so drift hits both alike
            stock_times.append(_timed(stock))
            our_times.append(_timed(ours))
    stock_s, ours_s = statistics.median(stock_times), statistics.median(our_times)
    return {
        "images": len(batch), "stock_seconds": stock_s, "sampler_seconds": ours_s, "ratio": ours_s / stock_s,
        # steadier than the medians' ratio on a shared machine: back-to-back pairs, and the fastest calls
        "paired_ratio": statistics.median(o / s for o, s in zip(our_times, stock_times)),
        "stock_min_seconds": min(stock_times), "sampler_min_seconds": min(our_times),
        "min_ratio": min(our_times) / min(stock_times),
    }


def bench_round(pipeline, prompts: list[str], reward_fn, config, rounds: int) -> dict[str, Any]:
    """``rounds`` DPOK rounds on a copy of ``pipeline``; per-phase seconds (median over rounds 2..) and policy
    throughput."""
    from dataclasses import replace

    from dpok.rl import train_dpok

    config = replace(config, runtime=replace(config.runtime, num_rounds=rounds, checkpoint_every=rounds, resume=False))
    pipeline = copy.deepcopy(pipeline)  # train_dpok attaches its LoRA to the UNet: the caller's stays bare
    with tempfile.TemporaryDirectory() as checkpoints:
        history = train_dpok(pipeline, prompts, reward_fn, config, checkpoints, progress=False).history
    timed = history[1:] or history
    phases = {phase: statistics.median(row[f"seconds_{phase}"] for row in timed) for phase in PHASES}
    total = statistics.median(sum(row[f"seconds_{phase}"] for phase in PHASES) for row in timed)
    transitions = config.policy.p_step * config.policy.accum * config.policy.p_batch
    return {
        "rounds": rounds,
        "round_seconds": total,
        "phase_seconds": phases,
        "policy_transitions_per_round": transitions,
        "policy_steps_per_round": config.policy.p_step,
        "policy_transitions_per_second": transitions / phases["policy"],
        "first_round_seconds": sum(history[0][f"seconds_{phase}"] for phase in PHASES),
    }


def fast_path(config, overrides: list[str] = ()):
    """``config`` with ``runtime.precision`` and ``runtime.compile`` ``auto``, except those ``overrides`` set."""
    from dataclasses import replace

    named = {o.partition("=")[0].strip() for o in overrides}
    changes = {key: "auto" for key in ("precision", "compile") if f"runtime.{key}" not in named}
    return replace(config, runtime=replace(config.runtime, **changes))


def fp32_eager(config):
    """``config`` in float32, uncompiled: the baseline of ``speedup_over_fp32_eager``."""
    from dataclasses import replace

    return replace(config, runtime=replace(config.runtime, precision="fp32", compile=False))


def fresh_round_context(pipeline, prompts: list[str], reward_fn, config):
    """A copy of ``pipeline`` set up as :func:`dpok.rl.train_dpok` sets it up (a fresh LoRA), and the
    :class:`~dpok.rl.context.RoundContext` of its rounds."""
    from dpok.rl.context import RoundContext, check_inputs, prepare_pipeline
    from dpok.rl.distributed import Ranks
    from dpok.rl.state import RunState
    from dpok.rl.update import step_weights

    pipeline = copy.deepcopy(pipeline)
    prompts = check_inputs(pipeline, prompts, config)
    prepare_pipeline(pipeline, config)
    RunState.create(pipeline.unet, config)
    return RoundContext(pipeline=pipeline, prompts=prompts, reward_fn=reward_fn, config=config, ranks=Ranks(),
                        step_weights=step_weights(pipeline.scheduler, config))


def first_update_log_ratio(pipeline, prompts: list[str], reward_fn, config) -> float:
    """max |log ρ| before the first update: round 1 sampled with a fresh LoRA, and each of its transitions
    rescored by the update's own computation (:func:`dpok.rl.update.rescoring_log_ratios`)."""
    from dpok.rl.rollout import rollout
    from dpok.rl.update import rescoring_log_ratios

    context = fresh_round_context(pipeline, prompts, reward_fn, config)
    _, _, trajectory = rollout(context, 1)
    return float(rescoring_log_ratios(context, trajectory).max())


def unet_flops(pipeline, config) -> dict[str, int]:
    """FLOPs of the UNet per guided prediction (one latent; two rows with CFG), per trained transition (forward
    and backward with the LoRA, plus the reference forward when ``kl.weight`` > 0), and per round."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dpok.rl.sampling import ddim_step_with_logprob, guided_noise_prediction

    context = fresh_round_context(pipeline, ["a red circle"], None, config)
    unet, scheduler = context.unet, context.scheduler
    scheduler.set_timesteps(config.sampler.num_inference_steps)
    size, channels = unet.config.sample_size, unet.config.in_channels
    x_t = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0)).to(context.device)
    t = scheduler.timesteps[:1].to(context.device)
    cond, uncond = context.pipeline.encode_prompt(["a red circle"], context.device, 1, config.sampler.guidance_scale > 1)
    guidance = config.sampler.guidance_scale

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    def predict():
        with torch.no_grad():
            guided_noise_prediction(unet, x_t, t, cond, uncond, guidance)

    def train():
        output = guided_noise_prediction(unet, x_t, t, cond, uncond, guidance)
        _, log_prob = ddim_step_with_logprob(scheduler, output, t, x_t, config.sampler.eta, prev_sample=x_t)
        log_prob.sum().backward()

    prediction = count(predict)
    transition = count(train) + (prediction if config.kl.weight > 0 else 0)
    steps = config.sampler.num_inference_steps
    sampled = config.rollout.g_batch + min(config.runtime.kl_report_trajectories, config.rollout.g_batch)
    trained = config.policy.p_step * config.policy.accum * config.policy.p_batch
    return {"per_guided_prediction": prediction, "per_trained_transition": transition,
            "per_round": sampled * steps * prediction + trained * transition}


def gemm_peak_flops(dtype, device, size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of a ``size``³ matmul in ``dtype`` over ``repeats`` calls (after one untimed call)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    run = _synchronised(lambda: a @ b, device)
    run()
    return 2 * size**3 / min(_timed(run) for _ in range(repeats))


def peak_memory_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_trl(setup: dict[str, Any], rounds: int, threads: int) -> dict[str, Any]:
    """Run scripts/bench_trl.py in its own venv with TRL 0.22 and return its JSON."""
    config = setup["rl"]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "trl.json"
        request = {
            "model": setup["model"], "prompts": setup["prompts"], "epochs": rounds, "threads": threads,
            "g_batch": config.rollout.g_batch, "steps": config.sampler.num_inference_steps, "guidance_scale": config.sampler.guidance_scale,
            "eta": config.sampler.eta, "learning_rate": config.policy.learning_rate, "clip_range": config.policy.clip_range,
            "max_grad_norm": config.policy.max_grad_norm,
            "transitions": config.policy.p_step * config.policy.accum * config.policy.p_batch,
            "transitions_per_step": config.policy.accum * config.policy.p_batch, "seed": config.seed, "out": str(out),
        }
        (Path(folder) / "request.json").write_text(json.dumps(request))
        subprocess.run([sys.executable, str(ROOT / "scripts/bench_trl.py"), str(Path(folder) / "request.json")],
                       check=True, cwd=ROOT)
        return json.loads(out.read_text())


def bench_fast_path(pipeline, prompts: list[str], reward_fn, config, rounds: int, overrides: list[str] = (),
                    gemm_size: int = 2048) -> dict[str, Any]:
    """The fast path's rounds against float32 eager's on the same work, its exact ratio, FLOP/s and GEMM peak."""
    import torch

    from dpok.rl.context import run_precision_of

    device = pipeline.unet.device
    fast, baseline = fast_path(config, overrides), fp32_eager(config)
    precision = run_precision_of(pipeline, fast)
    result: dict[str, Any] = {"precision": {"name": precision.name, "compile": precision.compile,
                                            "reason": precision.reason}}
    print(f"timing {rounds} DPOK rounds ({precision.name}, compile {precision.compile}) ...", file=sys.stderr)
    result["round"] = bench_round(pipeline, prompts, reward_fn, fast, rounds)
    if precision.name == "fp32" and not precision.compile:
        result["round_fp32_eager"] = None  # the fast path is float32 eager here
        result["speedup_over_fp32_eager"] = 1.0
    else:
        print(f"timing {rounds} DPOK rounds in float32 eager ...", file=sys.stderr)
        result["round_fp32_eager"] = bench_round(pipeline, prompts, reward_fn, baseline, rounds)
        result["speedup_over_fp32_eager"] = result["round_fp32_eager"]["round_seconds"] / result["round"]["round_seconds"]
    print("rescoring a round before any update ...", file=sys.stderr)
    result["first_update_max_abs_log_ratio"] = first_update_log_ratio(pipeline, prompts, reward_fn, fast)
    result["first_update_max_abs_log_ratio_fp32"] = first_update_log_ratio(pipeline, prompts, reward_fn, baseline)
    flops = unet_flops(pipeline, fast)
    result["unet_flops"] = flops
    result["unet_flops_per_second"] = flops["per_round"] / result["round"]["round_seconds"]
    dtype = precision.dtype or torch.float32
    result["gemm_peak_flops_per_second"] = gemm_peak_flops(dtype, device, gemm_size)
    result["gemm_peak_fp32_flops_per_second"] = (
        result["gemm_peak_flops_per_second"] if dtype == torch.float32
        else gemm_peak_flops(torch.float32, device, gemm_size)
    )
    result["fraction_of_gemm_peak"] = result["unet_flops_per_second"] / result["gemm_peak_flops_per_second"]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m dpok.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="local", help="Kedro environment whose model and settings to use")
    parser.add_argument("--model", default=None, help="diffusers pipeline folder or hub id to time instead of "
                        "the environment's base_model")
    parser.add_argument("--rounds", type=int, default=3, help="DPOK rounds (and TRL epochs) to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the stock pipeline and our sampler")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each before the timed ones")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda[:N] (default: finetune.device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="finetune.rl override")
    parser.add_argument("--out", default=None, help="JSON file (default: data/08_reporting/bench.json, "
                        "bench_sampler.json with --sampler-only)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--trl", action="store_true", help="also time TRL 0.22's DDPOTrainer (separate venv)")
    mode.add_argument("--sampler-only", action="store_true", help="time only the stock call against our "
                      "sampler (no DPOK rounds)")
    args = parser.parse_args(argv)
    if (args.rounds < 2 and not args.sampler_only) or args.repeats < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 2 (the first round is a warm-up), --repeats >= 1 and --warmup >= 0")

    import torch

    from dpok.devices import resolve_device
    from dpok.models import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = setting(args.env, args.set)
    if args.model:
        model = Path(args.model).expanduser()
        setup["model"] = str(model.resolve()) if model.exists() else args.model
    device = torch.device(resolve_device(args.device or setup["run"].device))
    pipeline = load_pipeline(setup["model"], device=device)
    pipeline.set_progress_bar_config(disable=True)
    result: dict[str, Any] = {
        "env": args.env, "overrides": args.set, "model": args.model or os.path.relpath(setup["model"], ROOT),
        "device": str(device),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "g_batch": setup["rl"].rollout.g_batch, "steps": setup["rl"].sampler.num_inference_steps,
    }
    print("timing the stock pipeline and our sampler ...", file=sys.stderr)
    result["sampler"] = bench_sampler(pipeline, setup["prompts"], setup["rl"], args.repeats, args.warmup)
    if not args.sampler_only:
        result.update(bench_fast_path(pipeline, setup["prompts"], setup["run"].reward_fn(), setup["rl"], args.rounds,
                                      args.set))
    result["peak_memory_mib"] = peak_memory_mib(device)
    if args.trl:
        print(f"timing {args.rounds} epochs of TRL's DDPOTrainer (its own venv) ...", file=sys.stderr)
        result["trl"] = bench_trl(setup, args.rounds, torch.get_num_threads())
        result["dpok_round_over_trl_epoch"] = result["round"]["round_seconds"] / result["trl"]["epoch_seconds"]
    out = Path(args.out or f"data/08_reporting/bench{'_sampler' if args.sampler_only else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

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
- ``round``: ``--rounds`` rounds of :func:`dpok.rl.train_dpok` (checkpoints in a temporary folder); the
  seconds of every phase (sampling, reward, KL report, buffer with V_φ's inputs, value steps, policy
  steps), median over the rounds after the first, and ``policy_transitions_per_second``
  (p_step · accum · p_batch / policy seconds);
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
    """``rounds`` DPOK rounds; per-phase seconds (median over rounds 2..) and policy throughput."""
    from dataclasses import replace

    from dpok.rl import train_dpok

    config = replace(config, runtime=replace(config.runtime, num_rounds=rounds, checkpoint_every=rounds, resume=False))
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
        "g_batch": setup["rl"].g_batch, "steps": setup["rl"].num_inference_steps,
    }
    print("timing the stock pipeline and our sampler ...", file=sys.stderr)
    result["sampler"] = bench_sampler(pipeline, setup["prompts"], setup["rl"], args.repeats, args.warmup)
    if not args.sampler_only:
        print(f"timing {args.rounds} DPOK rounds ...", file=sys.stderr)
        result["round"] = bench_round(pipeline, setup["prompts"], setup["run"].reward_fn(), setup["rl"], args.rounds)
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

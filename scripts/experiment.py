"""One DPOK experiment on the shapes world: train under a wall-time or round budget, then evaluate.

    python scripts/experiment.py NAME [--set key=value ...] [--minutes M | --rounds N] [--seed S]
                                 [--threads 1] [--out docs/experiments/runs]

Starts from the project's parameters as ``kedro run`` merges them (``finetune.rl``, the shared ``sampler``,
``pretrained_samples`` and the prompt file of ``prompts``), applies ``--set`` overrides to the RL settings
by their dotted path under ``finetune.rl`` (YAML values, e.g. ``--set kl.weight=0.01 --set
policy.train_step_window=[0,0.9]``; ``sampler.*`` sets the training sampler), trains on the ``train`` split with ``train_dpok`` until the budget is
spent (the round in progress finishes), then samples every prompt of the file (train and held-out) with
the evaluation's sampler on its fixed seeds, with the LoRA and without it (the same noise), and scores
both with the judge and the quality score. Writes ``<out>/<NAME>_seed<S>.json``: settings, history, per-image scores of both models.
``scripts/experiments_table.py`` turns a folder of these into the ablation table.

Two runs side by side with ``--threads 1`` each share a 2-core machine without slowing each other much.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


class _BudgetSpent(Exception):
    pass


def _parameters() -> dict:
    from dpok.config import project_parameters

    return project_parameters(project_root=ROOT)


def _settings(params: dict, overrides: list[str]) -> tuple[dict, dict]:
    """``finetune.rl`` and ``sampler`` with the ``--set`` overrides (``sampler.*`` keys go to the sampler)."""
    from dpok.config import with_overrides

    rl, sampler = {}, {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("sampler."):
            sampler[key.removeprefix("sampler.")] = yaml.safe_load(value)
        else:
            rl[key] = yaml.safe_load(value)
    try:
        return (with_overrides(params["finetune"]["rl"], rl, "finetune.rl"),
                with_overrides(params["sampler"], sampler, "sampler"))
    except ValueError as error:
        raise SystemExit(f"--set: {error}") from None


def _prompt_table(params: dict):
    from dpok.prompts import PromptsConfig, load_prompt_table

    prompts = dict(params["prompts"], path=str(ROOT / params["prompts"]["path"]))
    return load_prompt_table(PromptsConfig.from_dict(prompts))[0]


def _evaluate(pipeline, table, sampling, adapter: bool) -> dict[str, list[float]]:
    from dpok.evaluation import derive_seeds
    from dpok.evaluation.sampling import generate_seeded_images
    from dpok.rl.kl import reference_model
    from dpok.world import judge, quality

    seeds = derive_seeds(sampling.seed, sampling.images_per_prompt)
    prompts = [p for p in table["prompt"] for _ in seeds]
    all_seeds = [s for _ in table["prompt"] for s in seeds]
    kwargs = dict(sampling.sampler.to_dict(), batch_size=sampling.batch_size)
    if adapter:
        images = generate_seeded_images(pipeline, prompts, all_seeds, **kwargs)
    else:
        with reference_model(pipeline.unet):
            images = generate_seeded_images(pipeline, prompts, all_seeds, **kwargs)
    return {"judge": judge(images, prompts).tolist(), "quality": quality(images).tolist()}


def _base_scores(pipeline, table, sampling, out: Path) -> dict[str, list[float]]:
    """The base model's scores, cached in ``out`` by prompts and sampler settings (it never changes)."""
    settings = dict(sampling.sampler_settings(), batch_size=sampling.batch_size)
    key = hashlib.sha256(json.dumps([table["prompt"].tolist(), settings], sort_keys=True).encode()).hexdigest()[:12]
    cache = out / f"base_{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    scores = _evaluate(pipeline, table, sampling, adapter=False)
    out.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(scores))
    tmp.replace(cache)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float)
    budget.add_argument("--rounds", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs/experiments/runs"))
    parser.add_argument("--no-eval", action="store_true", help="train and print the history's means only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from dpok.evaluation import SamplingConfig
    from dpok.models import load_pipeline
    from dpok.rl import FinetuneConfig, train_dpok
    from dpok.world import judge

    params = _parameters()
    rl, sampler = _settings(params, args.set)
    rl["seed"] = args.seed
    rl["runtime"].update(num_rounds=args.rounds or 100_000, resume=False, checkpoint_every=100_000)
    config = FinetuneConfig.from_params(rl, sampler)
    table = _prompt_table(params)
    train_prompts = table.loc[table["split"] == "train", "prompt"].tolist()
    sampling = SamplingConfig.from_params(params["pretrained_samples"], params["sampler"])
    pipeline = load_pipeline(str(ROOT / "data/06_models/shapes_base"), device="cpu")
    pipeline.set_progress_bar_config(disable=True)

    history: list[dict] = []
    started = time.perf_counter()

    def on_round(round_number: int, metrics: dict) -> None:
        history.append(dict(metrics))
        if args.minutes is not None and time.perf_counter() - started > 60 * args.minutes:
            raise _BudgetSpent

    with tempfile.TemporaryDirectory() as checkpoints:
        try:
            train_dpok(pipeline, train_prompts, lambda im, pr: judge(im, pr), config, checkpoints,
                       on_round=on_round, progress=False)
        except _BudgetSpent:
            pass
    train_seconds = time.perf_counter() - started
    if args.no_eval:
        for key in ("reward_mean", "value_variance_ratio", "kl_bound_nats", "seconds_sampling", "seconds_policy"):
            print(key, " ".join(f"{row[key]:.3g}" for row in history))
        return
    finetuned = _evaluate(pipeline, table, sampling, adapter=True)
    base = _base_scores(pipeline, table, sampling, Path(args.out))
    result = {
        "name": args.name, "seed": args.seed, "overrides": args.set, "threads": args.threads,
        "budget_minutes": args.minutes, "budget_rounds": args.rounds, "rounds": len(history),
        "train_seconds": train_seconds, "settings": config.to_dict(),
        "prompts": table[["prompt", "category", "split"]].to_dict(orient="list"),
        "images_per_prompt": sampling.images_per_prompt, "base": base, "finetuned": finetuned,
        "history": history,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}_seed{args.seed}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(path)
    split = np.repeat(np.asarray(result["prompts"]["split"]), sampling.images_per_prompt)
    for part in ("train", "heldout"):
        mask = split == part
        delta = np.asarray(finetuned["judge"])[mask] - np.asarray(base["judge"])[mask]
        q = np.mean(np.asarray(finetuned["quality"])[mask]) / np.mean(np.asarray(base["quality"])[mask])
        print(f"{args.name} seed {args.seed} {part}: Δ judge {delta.mean():+.3f}, quality ×{q:.3f}")
    print(f"{len(history)} rounds in {train_seconds:.0f} s -> {path}")


if __name__ == "__main__":
    main()

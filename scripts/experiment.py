"""One DPOK experiment on the shapes world: train under a wall-time or round budget, then evaluate.

    python scripts/experiment.py NAME [--set key=value ...] [--minutes M | --rounds N] [--seed S]
                                 [--threads 1] [--out docs/experiments/runs]

Starts from ``conf/base/parameters_finetune.yml`` (``finetune.rl``) and the prompt file of
``conf/base/parameters_prompts.yml``, applies ``--set`` overrides to the RL settings (YAML values, e.g.
``--set kl_weight=0.01 --set train_step_window=[0,0.9]``), trains on the ``train`` split with
``train_dpok`` until the budget is spent (the round in progress finishes), then samples every prompt of
the file (train and held-out) with the evaluation sampler of ``conf/base/parameters_pretrained.yml`` on
its fixed seeds, with the LoRA and without it (the same noise), and scores both with the judge and the
quality score. Writes ``<out>/<NAME>_seed<S>.json``: settings, history, per-image scores of both models.
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


def _settings(overrides: list[str]) -> dict:
    from dpok.config import project_parameters

    params = project_parameters(project_root=ROOT)["finetune"]["rl"]
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in params:
            raise SystemExit(f"--set {item}: unknown finetune.rl key {key!r}")
        params[key] = yaml.safe_load(value)
    return params


def _prompt_table():
    from dpok.prompts import PromptsConfig, load_prompt_table

    params = yaml.safe_load((ROOT / "conf/base/parameters_prompts.yml").read_text())["prompts"]
    params["path"] = str(ROOT / params["path"])
    return load_prompt_table(PromptsConfig(**params))[0]


def _evaluate(pipeline, table, sampling: dict, adapter: bool) -> dict[str, list[float]]:
    from dpok.evaluation import derive_seeds
    from dpok.evaluation.sampling import generate_seeded_images
    from dpok.rl.kl import reference_model
    from dpok.world import judge, quality

    seeds = derive_seeds(sampling["seed"], sampling["images_per_prompt"])
    prompts = [p for p in table["prompt"] for _ in seeds]
    all_seeds = [s for _ in table["prompt"] for s in seeds]
    kwargs = dict(num_inference_steps=sampling["num_inference_steps"], guidance_scale=sampling["guidance_scale"],
                  eta=sampling["eta"], batch_size=sampling["batch_size"])
    if adapter:
        images = generate_seeded_images(pipeline, prompts, all_seeds, **kwargs)
    else:
        with reference_model(pipeline.unet):
            images = generate_seeded_images(pipeline, prompts, all_seeds, **kwargs)
    return {"judge": judge(images, prompts).tolist(), "quality": quality(images).tolist()}


def _base_scores(pipeline, table, sampling: dict, out: Path) -> dict[str, list[float]]:
    """The base model's scores, cached in ``out`` by prompts and sampler settings (it never changes)."""
    key = hashlib.sha256(json.dumps([table["prompt"].tolist(), sampling], sort_keys=True).encode()).hexdigest()[:12]
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

    from dpok.models import load_pipeline
    from dpok.rl import FinetuneConfig, train_dpok
    from dpok.world import judge

    params = _settings(args.set)
    params.update(seed=args.seed, num_rounds=args.rounds or 100_000, resume=False, checkpoint_every=100_000)
    config = FinetuneConfig.from_dict(params)
    table = _prompt_table()
    train_prompts = table.loc[table["split"] == "train", "prompt"].tolist()
    sampling = yaml.safe_load((ROOT / "conf/base/parameters_pretrained.yml").read_text())["pretrained"]
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
        "images_per_prompt": sampling["images_per_prompt"], "base": base, "finetuned": finetuned,
        "history": history,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}_seed{args.seed}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(path)
    split = np.repeat(np.asarray(result["prompts"]["split"]), sampling["images_per_prompt"])
    for part in ("train", "heldout"):
        mask = split == part
        delta = np.asarray(finetuned["judge"])[mask] - np.asarray(base["judge"])[mask]
        q = np.mean(np.asarray(finetuned["quality"])[mask]) / np.mean(np.asarray(base["quality"])[mask])
        print(f"{args.name} seed {args.seed} {part}: Δ judge {delta.mean():+.3f}, quality ×{q:.3f}")
    print(f"{len(history)} rounds in {train_seconds:.0f} s -> {path}")


if __name__ == "__main__":
    main()

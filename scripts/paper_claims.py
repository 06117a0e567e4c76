"""Collect the paper-claims experiments (scripts/paper_claims.sh) into the table, figures and verdicts.

    python scripts/paper_claims.py [--out-json data/08_reporting/paper_claims.json] [--docs docs/results.md]

Reads every DVC experiment named ``claims-<arm>-s<seed>`` (any baseline commit) straight from its Git ref
and the DVC cache: the evaluation's per-image scores of the base and the fine-tuned model (same prompts
and noise), the finetune history (KL bound, training rewards) and the run's parameters. Whatever has
finished is used; arms not run yet are listed as such. Writes the JSON (every number, per run and per
arm, and the verdicts), docs/results.md, and two committed figures under docs/results/: the training
reward curves (the paper's Figure 7) and a grid of the same seeds for base and each arm.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dpok.evaluation.claims import ARM_LABELS, ARMS, arm_table, claims, results_markdown, training_curves  # noqa: E402

NAME = re.compile(r"^claims-(?P<arm>[a-z_]+)-s(?P<seed>\d+)$")
SAMPLES = "data/07_model_output"
KL_REPORTS = 5  # the KL bound of a run: mean of its last five reports


def experiments() -> list[dict]:
    """Every claims experiment's ref, arm and seed (the newest ref when a name exists twice)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--sort=creatordate", "--format=%(refname)", "refs/exps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()
    found = {}
    for ref in refs:
        match = NAME.match(ref.rsplit("/", 1)[-1])
        if match and match["arm"] in ARMS:
            found[ref.rsplit("/", 1)[-1]] = {"name": ref.rsplit("/", 1)[-1], "ref": ref, "arm": match["arm"],
                                             "seed": int(match["seed"])}
    return sorted(found.values(), key=lambda e: (ARMS.index(e["arm"]), e["seed"]))


def _git_file(ref: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def _dvc_bytes(ref: str, path: str) -> bytes:
    import dvc.api

    with dvc.api.open(path, repo=str(ROOT), rev=ref, mode="rb") as handle:
        return handle.read()


def load_run(experiment: dict) -> dict:
    ref = experiment["ref"]
    base = pd.read_parquet(io.BytesIO(_dvc_bytes(ref, f"{SAMPLES}/pretrained_manifest.parquet")))
    tuned = pd.read_parquet(io.BytesIO(_dvc_bytes(ref, f"{SAMPLES}/finetuned_manifest.parquet")))
    history = pd.read_csv(io.StringIO(_git_file(ref, "data/08_reporting/finetune_history.csv")))
    params = yaml.safe_load(_git_file(ref, "conf/base/parameters_finetune.yml"))["finetune"]
    commit = subprocess.run(["git", "rev-parse", f"{ref}^"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    return {**experiment, "base": base, "tuned": tuned, "history": history, "params": params, "baseline": commit}


def per_prompt_rows(run: dict) -> pd.DataFrame:
    scores = run["base"].merge(run["tuned"], on=["prompt", "seed"], suffixes=("_base", "_tuned"))
    if len(scores) != len(run["tuned"]):
        raise ValueError(f"{run['name']}: the fine-tuned images are not on the base model's prompts and seeds")
    table = scores.groupby("prompt").agg(
        split=("split_base", "first"), judge_base=("shapes_judge_base", "mean"),
        judge_tuned=("shapes_judge_tuned", "mean"), quality_base=("shapes_quality_base", "mean"),
        quality_tuned=("shapes_quality_tuned", "mean"),
    ).reset_index()
    return table.assign(arm=run["arm"], seed=run["seed"])


def kl_bound(run: dict) -> float:
    reports = run["history"]["kl_bound_nats"].dropna()
    return float(reports.tail(KL_REPORTS).mean()) if len(reports) else float("nan")


def training_rows(run: dict) -> pd.DataFrame:
    history = run["history"]
    if "reward_mean" not in history.columns:  # SFT: no online samples
        return pd.DataFrame()
    g_batch = run["params"]["rl"]["g_batch"]
    return pd.DataFrame({"arm": run["arm"], "seed": run["seed"], "round": history["round"],
                         "trajectories": history["round"] * g_batch, "reward": history["reward_mean"]})


def comparison_grid(runs: list[dict], prompts: int = 6, scale: int = 4):
    """Rows: training prompts; columns: base and each arm's lowest seed, all at the first evaluation seed."""
    from PIL import Image, ImageDraw

    first = {}
    for run in runs:
        if run["arm"] not in first or run["seed"] < first[run["arm"]]["seed"]:
            first[run["arm"]] = run
    columns = [("base", None)] + [(arm, first[arm]) for arm in ARMS if arm in first]
    reference = next(iter(first.values()))
    manifest = reference["base"]
    train = manifest[manifest["split"] == "train"].groupby("prompt", sort=False).head(1)
    # spread over the categories: each category's first prompt, then each one's second, ...
    train = train.assign(rank=train.groupby("category").cumcount()).sort_values(["rank", "category"]).head(prompts)
    tiles, label_height = [], 14
    for _, row in train.iterrows():
        tiles_row = []
        for arm, run in columns:
            if run is None:
                data = _dvc_bytes(reference["ref"], f"{SAMPLES}/pretrained_samples/{row['file']}")
            else:
                tuned = run["tuned"]
                file = tuned.loc[(tuned["prompt"] == row["prompt"]) & (tuned["seed"] == row["seed"]), "file"].iloc[0]
                data = _dvc_bytes(run["ref"], f"{SAMPLES}/finetuned_samples/{file}")
            image = Image.open(io.BytesIO(data)).convert("RGB")
            tiles_row.append(image.resize((image.width * scale, image.height * scale), Image.NEAREST))
        tiles.append((row["prompt"], tiles_row))
    width, height = tiles[0][1][0].size
    sheet = Image.new("RGB", (width * len(columns), label_height + len(tiles) * (height + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (arm, _) in enumerate(columns):
        draw.text((c * width + 2, 1), arm, fill="black")
    for r, (prompt, row_tiles) in enumerate(tiles):
        top = label_height + r * (height + label_height)
        draw.text((2, top + 1), prompt, fill="black")
        for c, tile in enumerate(row_tiles):
            sheet.paste(tile, (c * width, top + label_height))
    return sheet


def _interval_dict(row: pd.Series) -> dict:
    out = {}
    for key, value in row.items():
        out[key] = value.as_dict() if hasattr(value, "as_dict") else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", default="data/08_reporting/paper_claims.json")
    parser.add_argument("--docs", default="docs/results.md")
    parser.add_argument("--figures", default="docs/results")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    found = experiments()
    if not found:
        raise SystemExit("no experiment named claims-<arm>-s<seed> yet: run scripts/paper_claims.sh first")
    runs = [load_run(e) for e in found]
    per_prompt = pd.concat([per_prompt_rows(r) for r in runs], ignore_index=True)
    kl = pd.DataFrame([{"arm": r["arm"], "seed": r["seed"], "kl_bound_nats": kl_bound(r)} for r in runs])
    training = pd.concat([training_rows(r) for r in runs], ignore_index=True)
    table = arm_table(per_prompt, kl, "train", args.resamples)
    heldout = arm_table(per_prompt, kl, "heldout", args.resamples)
    verdicts = claims(per_prompt, kl, training, "train", args.resamples)

    figures = ROOT / args.figures
    figures.mkdir(parents=True, exist_ok=True)
    base_reward = None
    sft_runs = [r for r in runs if r["arm"] == "sft"]
    rewards = [pd.read_csv(io.StringIO(_git_file(r["ref"], "data/08_reporting/finetune_rewards.csv")))["reward"].mean()
               for r in sft_runs]
    if rewards:
        base_reward = float(np.mean(rewards))
    shown = []
    if not training.empty:
        training_curves(training, base_reward).save(figures / "training_reward_curves.png")
        shown.append(("Training reward against trajectories sampled, per DPOK arm (the paper's Figure 7).",
                      f"{Path(args.figures).name}/training_reward_curves.png"))
    comparison_grid(runs).save(figures / "arms_grid.png")
    shown.append(("The same noise for every model: base, then each arm's first seed, at the first evaluation "
                  "seed of six training prompts.", f"{Path(args.figures).name}/arms_grid.png"))

    settings = {r["name"]: {"arm": r["arm"], "seed": r["seed"], "baseline_commit": r["baseline"],
                            "method": r["params"].get("method", "dpok"), "rl": r["params"]["rl"],
                            "sft": r["params"].get("sft"), "kl_bound_nats": kl_bound(r)} for r in runs}
    budget = sorted({r["params"]["rl"]["num_rounds"] * r["params"]["rl"]["g_batch"] for r in runs})
    result = {
        "experiments": settings,
        "sample_budget_per_run": budget,
        "arms": {arm: _interval_dict(row) for arm, row in table.iterrows()},
        "arms_heldout": {arm: _interval_dict(row) for arm, row in heldout.iterrows()},
        "claims": verdicts,
        "missing": [f"claims-{a}-s{s}" for a in ARMS for s in sorted({r["seed"] for r in runs})
                    if not any(r["arm"] == a and r["seed"] == s for r in runs)],
    }
    out = ROOT / args.out_json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    intro = (
        f"Generated by `python scripts/paper_claims.py` from the DVC experiments of `scripts/paper_claims.sh` "
        f"({len(runs)} runs: " + ", ".join(f"{ARM_LABELS[a]} × {sum(r['arm'] == a for r in runs)}" for a in ARMS
                                           if any(r['arm'] == a for r in runs))
        + f"). Every run has the same sample budget ({', '.join(map(str, budget))} trajectories, i.e. reward calls) "
        "on the default training prompts and is evaluated on the evaluation's fixed seeds (16 per prompt), base "
        "and fine-tuned from the same noise. Verdicts are computed from the intervals, not chosen.\n\n"
        "Repeat: `scripts/paper_claims.sh` runs every arm and seed as a DVC experiment (skipping finished ones; "
        "`SEEDS`, `ROUNDS`, `THREADS` set the matrix), or one arm and seed, e.g. `scripts/paper_claims.sh sft` "
        "with `SEEDS=0`; then `python scripts/paper_claims.py` rewrites this page. `dvc exp show` lists the "
        "experiments with their parameters and metrics."
    )
    (ROOT / args.docs).write_text(results_markdown(table, verdicts, heldout, intro, tuple(shown)))
    for v in verdicts:
        print(f"claim {v['claim']}: {v['verdict']} — {v['evidence']}")
    print(f"wrote {args.out_json}, {args.docs}, {args.figures}/")


if __name__ == "__main__":
    main()

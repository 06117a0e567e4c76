"""Collect the paper-claims experiments (scripts/paper_claims.sh) into the table, figures and verdicts.

    python scripts/paper_claims.py [--out-json data/08_reporting/paper_claims.json] [--docs docs/results.md]
    python scripts/paper_claims.py --arm-overrides ARM          # the arm's `dvc exp run -S` overrides
    python scripts/paper_claims.py --single-prompt-path CATEGORY
    python scripts/paper_claims.py --write-single-prompts       # data/01_raw/prompts/claims_<category>.csv

Two protocols, as in the paper: claims 1–2 on single-prompt runs, ``claims-<arm>-<category>-s<seed>``, one
prompt per category (color, count, composition, location; ``--write-single-prompts`` picks it), and claim 3
on multi-prompt runs, ``claims-<arm>-s<seed>``. Reads every such DVC experiment (any baseline commit)
straight from its Git ref and the DVC cache: the evaluation's per-image scores of the base and the
fine-tuned model (same prompts and noise), the finetune history (KL bound, training rewards) and the run's
parameters, which must be the ones its name promises (the arm's overrides in scripts/claims_arms.yml, its
seed, its prompt file): a mismatch is an error naming the experiment, the key, expected and found, before
anything is written. Each experiment is then archived in data/08_reporting/paper_claims_runs/<name>/ (its
parameters, per-image scores, history and the images a grid shows; committed with the results), and the
tables, verdicts and figures are computed from the archive: experiment refs stay in the clone that ran
them, the archive travels with the repository, so a matrix can be run in parts, in several clones or
sessions. Whatever has finished is used; runs not there yet are listed as such. Writes the JSON (every
number, per run and per arm, and the verdicts), docs/results.md, and committed figures under docs/results/:
training reward curves (the paper's Figure 7), the reward–KL trade-off, and grids of the same seeds for
base and each arm.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dpok.config import flatten  # noqa: E402
from dpok.evaluation.claims import (  # noqa: E402
    ARMS,
    arm_label,
    arm_table,
    claims,
    results_markdown,
    reward_kl_tradeoff,
    training_curves,
)

ARMS_FILE = ROOT / "scripts" / "claims_arms.yml"
NAME = re.compile(r"^claims-(?P<arm>[^-]+)(?:-(?P<category>[^-]+))?-s(?P<seed>\d+)$")
CATEGORIES = ("color", "count", "composition", "location")
CLAIM_ARMS = ("sft", "rl", "rl_kl", "rl_kl_v")  # the arms the three claims compare (the others are extra)
PROMPTS_DIR = "data/01_raw/prompts"
HEADROOM = "data/08_reporting/headroom_candidates.csv"
SHAPESEVAL = "data/01_raw/prompts/shapeseval.csv"
# The single prompt's base solve rate closest to this: room to improve, and to get worse (over-optimisation).
TARGET_SOLVE_RATE = 0.35
SAMPLES = "data/07_model_output"
# Every collected experiment is kept here (git-tracked): the results outlive the experiments' Git refs, which
# a clone does not carry, so the matrix can span sessions and machines.
RUNS_DIR = "data/08_reporting/paper_claims_runs"
GRID_PROMPTS, GRID_SEEDS_SINGLE = 6, 3
TIMING = "data/08_reporting/paper_claims_timing.csv"
# What the archive keeps of a manifest: what the tables and grids read (not the pixels' hashes, base rates).
MANIFEST_COLUMNS = ("prompt", "category", "split", "seed", "file", "shapes_judge", "shapes_quality")  # scripts/paper_claims.sh: seconds per finished experiment  # what a grid shows: six prompts (multi), a prompt's first seeds (single)
KL_REPORTS = 5  # the KL bound of a run: mean of its last five reports
_ABSENT = "<absent>"


# --- the arms: one table (scripts/claims_arms.yml) for the shell script and this collector ---------------

def load_arm_registry(path: Path = ARMS_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def _beta(arm: str, registry: dict) -> float | None:
    """β of a β-sweep arm's name (``rl_kl_b0.1`` → 0.1); None for any other name."""
    match = re.fullmatch(re.escape(registry["beta_sweep"]["prefix"]) + r"(\d+(?:\.\d+)?)", arm)
    return float(match[1]) if match else None


def arm_overrides(arm: str, registry: dict) -> dict[str, Any]:
    """The parameters the arm sets, by dotted key; ValueError for an arm that is not in the registry."""
    if arm in registry["arms"]:
        return dict(registry["arms"][arm] or {})
    if (beta := _beta(arm, registry)) is not None:
        sweep = registry["beta_sweep"]
        return {sweep["key"]: beta, **(sweep.get("overrides") or {})}
    known = ", ".join(registry["arms"])
    raise ValueError(f"unknown arm '{arm}' (known: {known}, or {registry['beta_sweep']['prefix']}<β>, "
                     f"e.g. {registry['beta_sweep']['prefix']}0.1)")


SINGLE_PROMPT_ENV = ROOT / "conf" / "shapes_single" / "parameters_finetune.yml"
# The parameter files of conf/base an experiment's overrides go to, by top-level key (paper_claims.sh's -S).
PARAMETER_FILES = {"finetune": "conf/base/parameters_finetune.yml", "prompts": "conf/base/parameters_prompts.yml",
                   "pretrained_samples": "conf/base/parameters_pretrained_samples.yml"}


def protocol_overrides(protocol: str, env_file: Path = SINGLE_PROMPT_ENV) -> dict[str, Any]:
    """What a protocol sets besides the arm: nothing for ``multi`` (the defaults), and for ``single`` the
    paper's single-prompt settings of ``conf/shapes_single`` (their one home), read from its files: the
    ``finetune.rl`` and ``finetune.probe`` keys (its output folders stay its own) and the evaluation's
    ``pretrained_samples`` keys (images per prompt)."""
    if protocol == "multi":
        return {}
    if protocol != "single":
        raise ValueError(f"unknown protocol '{protocol}' (single, multi)")
    finetune = yaml.safe_load(env_file.read_text())["finetune"]
    samples_file = env_file.with_name("parameters_pretrained_samples.yml")
    samples = yaml.safe_load(samples_file.read_text())["pretrained_samples"] if samples_file.exists() else {}
    return {**flatten(finetune.get("probe") or {}, "finetune.probe."), **flatten(finetune["rl"], "finetune.rl."),
            **flatten(samples, "pretrained_samples.")}


def run_overrides(arm: str, protocol: str, registry: dict) -> dict[str, Any]:
    """The protocol's settings, then the arm's (an arm's setting wins: `rl` keeps β = 0 on a single prompt)."""
    return {**protocol_overrides(protocol), **arm_overrides(arm, registry)}


def _format_value(value: Any) -> str:
    """A value as `dvc exp run -S key=value` reads it back typed (YAML booleans, floats without exponents:
    PyYAML reads 1e-05 back as a string)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if "e" not in repr(value) else np.format_float_positional(value, trim="-")
    return str(value)


def override_text(overrides: dict[str, Any]) -> str:
    """``key=value`` pairs separated by spaces, for the shell script's ``-S`` arguments."""
    return " ".join(f"{key}={_format_value(value)}" for key, value in overrides.items())


# --- the single prompts ------------------------------------------------------------------------------------

def single_prompt_path(category: str) -> str:
    """The prompt file of a category's single-prompt runs; ValueError for an unknown category."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category '{category}' ({', '.join(CATEGORIES)})")
    return f"{PROMPTS_DIR}/claims_{category}.csv"


def pick_single_prompts(headroom: pd.DataFrame, shapeseval: pd.DataFrame,
                        target: float = TARGET_SOLVE_RATE) -> pd.DataFrame:
    """Per category, the prompt that is not a ShapesEval test prompt whose base solve rate is closest to
    ``target`` (ties: the first prompt text in sorted order). One row per category: prompt, category,
    solve_rate."""
    test = set(shapeseval.loc[shapeseval["split"] == "test", "prompt"].str.strip())
    pool = headroom[~headroom["prompt"].str.strip().isin(test)].copy()
    # Rounded: |0.30 − 0.35| and |0.40 − 0.35| differ in the last float digit but are the same distance.
    pool["distance"] = (pool["solve_rate"] - target).abs().round(9)
    rows = []
    for category in CATEGORIES:
        candidates = pool[pool["category"] == category].sort_values(["distance", "prompt"])
        if candidates.empty:
            raise ValueError(f"no prompt of category '{category}' outside ShapesEval's test split in the headroom "
                             "table")
        rows.append(candidates.iloc[0][["prompt", "category", "solve_rate"]])
    return pd.DataFrame(rows).reset_index(drop=True)


def single_prompt_csv(prompt: str, category: str) -> str:
    """A one-prompt file in the format of data/01_raw/prompts/shapes_single.csv (prompt, category)."""
    return pd.DataFrame({"prompt": [prompt], "category": [category]}).to_csv(index=False)


def write_single_prompts(picked: pd.DataFrame, root: Path = ROOT) -> list[Path]:
    """Write each category's prompt file. An existing file with another prompt is an error, not overwritten:
    experiments already named after the category ran on it."""
    texts = {root / single_prompt_path(row.category): single_prompt_csv(row.prompt, row.category)
             for row in picked.itertuples()}
    changed = [path for path, text in texts.items() if path.exists() and path.read_text() != text]
    if changed:
        raise ValueError("single-prompt files exist with another prompt (not overwritten; remove them to "
                         f"re-pick, and the experiments that ran on them): {', '.join(map(str, changed))}")
    for path, text in texts.items():
        path.write_text(text)
    return list(texts)


# --- the experiments ---------------------------------------------------------------------------------------

def parse_experiment_name(name: str, registry: dict) -> dict | None:
    """Arm, category (single-prompt runs) and seed of a claims experiment's name; None for another name,
    ValueError for a claims name with an unknown arm or category."""
    match = NAME.match(name)
    if match is None:
        return None
    arm_overrides(match["arm"], registry)  # raises for an unknown arm
    category = match["category"]
    if category is not None:
        single_prompt_path(category)  # raises for an unknown category
    return {"name": name, "arm": match["arm"], "category": category, "seed": int(match["seed"]),
            "protocol": "multi" if category is None else "single"}


def expected_params(experiment: dict, registry: dict) -> dict[str, Any]:
    """What the experiment's name promises its recorded parameters hold."""
    expected = {"finetune.rl.seed": experiment["seed"],
                **run_overrides(experiment["arm"], experiment["protocol"], registry)}
    if experiment["category"] is not None:
        expected["prompts.path"] = single_prompt_path(experiment["category"])
    return expected


def _lookup(params: dict, key: str) -> Any:
    value = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(found, bool):
        return found is expected
    if isinstance(expected, int | float) and isinstance(found, int | float):
        return math.isclose(found, expected, rel_tol=1e-9, abs_tol=1e-12)
    return found == expected


def check_params(experiment: dict, params: dict, registry: dict) -> None:
    """ValueError naming the experiment, the key, expected and found when the recorded parameters (``finetune``,
    ``prompts`` and ``pretrained_samples`` blocks) are not the ones its name promises; a multi-prompt run must not be on a
    single-prompt file."""
    for key, expected in expected_params(experiment, registry).items():
        if not _same(found := _lookup(params, key), expected):
            raise ValueError(f"{experiment['name']}: {key} expected {expected!r} (arm {experiment['arm']}, seed "
                             f"{experiment['seed']}), found {found!r}")
    path = _lookup(params, "prompts.path")
    if experiment["category"] is None and isinstance(path, str) and path.startswith(f"{PROMPTS_DIR}/claims_"):
        raise ValueError(f"{experiment['name']}: prompts.path expected the multi-prompt set (not a single-prompt "
                         f"file), found {path!r}")


def _arm_rank(arm: str) -> tuple[int, str]:
    return (ARMS.index(arm) if arm in ARMS else len(ARMS), arm)


def experiments(registry: dict) -> list[dict]:
    """Every claims experiment's ref, arm, category and seed (the newest ref when a name exists twice)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--sort=creatordate", "--format=%(refname) %(objectname)", "refs/exps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    found = {}
    for line in refs:
        ref, commit = line.split()
        if (experiment := parse_experiment_name(ref.rsplit("/", 1)[-1], registry)) is not None:
            found[experiment["name"]] = {**experiment, "ref": ref, "commit": commit}
    return sorted(found.values(), key=lambda e: (e["protocol"], _arm_rank(e["arm"]), e["category"] or "", e["seed"]))


def _git_file(ref: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def _dvc_bytes(ref: str, path: str) -> bytes:
    return _dvc_filesystem(ref).read_bytes(path)


_FILESYSTEMS: dict[str, Any] = {}


def _dvc_filesystem(ref: str):
    """The experiment's files, Git- and DVC-tracked alike (one file system per ref: opening one per file costs
    a repository's set-up each time)."""
    if ref not in _FILESYSTEMS:
        from dvc.api import DVCFileSystem

        _FILESYSTEMS[ref] = DVCFileSystem(str(ROOT), rev=ref)
    return _FILESYSTEMS[ref]


def image_diversity(images: list[bytes]) -> float:
    """How different a prompt's evaluation images are from one another: the mean over pairs of their
    root-mean-square pixel difference (pixels in [0, 1]). Samples collapsing to one layout, the form
    over-optimisation takes where the reward cannot be fooled, lower it."""
    from PIL import Image
    from scipy.spatial.distance import pdist

    if len(images) < 2:
        return float("nan")
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64).ravel() / 255
                       for b in images])
    return float(pdist(pixels).mean() / np.sqrt(pixels.shape[1]))


def diversity_table(base: pd.DataFrame, tuned: pd.DataFrame, read: Any) -> pd.DataFrame:
    """Per prompt: the diversity of the base model's and the fine-tuned model's evaluation images
    (``read(kind, file)`` returns an image's bytes)."""
    rows = []
    for prompt, part in base.groupby("prompt", sort=False):
        files = tuned.loc[tuned["prompt"] == prompt, "file"]
        rows.append({"prompt": prompt,
                     "diversity_base": image_diversity([read("pretrained_samples", f) for f in part["file"]]),
                     "diversity_tuned": image_diversity([read("finetuned_samples", f) for f in files])})
    return pd.DataFrame(rows)


def recorded_params(experiment: dict) -> dict:
    """The parameter blocks the experiment ran with (``finetune``, ``prompts``, ``pretrained_samples``)."""
    return {key: yaml.safe_load(_git_file(experiment["ref"], path))[key] for key, path in PARAMETER_FILES.items()}


def _rl_setting(rl: dict, block: str, key: str) -> Any:
    """An RL setting from its block (``rl.runtime.num_rounds``), or from ``rl`` itself in older parameter
    files."""
    return (rl.get(block) or {}).get(key, rl.get(key))


def reward_calls(params: dict) -> int:
    """The run's sample budget: rounds × trajectories a round (SFT samples the same number from the base)."""
    rl = params["finetune"]["rl"]
    return int(_rl_setting(rl, "runtime", "num_rounds") * _rl_setting(rl, "rollout", "g_batch"))


def load_run(experiment: dict, params: dict) -> dict:
    ref = experiment["ref"]
    base = pd.read_parquet(io.BytesIO(_dvc_bytes(ref, f"{SAMPLES}/pretrained_manifest.parquet")))
    tuned = pd.read_parquet(io.BytesIO(_dvc_bytes(ref, f"{SAMPLES}/finetuned_manifest.parquet")))
    history = pd.read_csv(io.StringIO(_git_file(ref, "data/08_reporting/finetune_history.csv")))
    commit = subprocess.run(["git", "rev-parse", f"{ref}^"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    images = {}
    for _, row in grid_rows(base, experiment["protocol"]).iterrows():
        file = tuned.loc[(tuned["prompt"] == row["prompt"]) & (tuned["seed"] == row["seed"]), "file"].iloc[0]
        images[f"pretrained_samples/{row['file']}"] = _dvc_bytes(ref, f"{SAMPLES}/pretrained_samples/{row['file']}")
        images[f"finetuned_samples/{file}"] = _dvc_bytes(ref, f"{SAMPLES}/finetuned_samples/{file}")
    rewards = (_git_file(ref, "data/08_reporting/finetune_rewards.csv") if experiment["arm"] == "sft" else None)
    diversity = diversity_table(base, tuned, lambda kind, file: _dvc_bytes(ref, f"{SAMPLES}/{kind}/{file}"))
    return {**experiment, "base": base, "tuned": tuned, "history": history, "params": params["finetune"],
            "diversity": diversity,
            "recorded_params": params, "prompts_path": params["prompts"]["path"],
            "reward_calls": reward_calls(params), "baseline": commit, "images": images, "sft_rewards": rewards}


# --- the archive: one folder per collected experiment, what the tables, verdicts and figures need ------------

def archive_run(run: dict, runs_dir: Path) -> Path:
    """Write the run's folder (written beside, then swapped in: an interrupted write loses nothing)."""
    target, scratch = runs_dir / run["name"], runs_dir / f".{run['name']}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    meta = {key: run.get(key) for key in ("name", "arm", "category", "seed", "protocol", "commit", "baseline",
                                          "reward_calls")}
    (scratch / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    params = run.get("recorded_params") or {"finetune": run["params"], "prompts": {"path": run["prompts_path"]}}
    (scratch / "params.yml").write_text(yaml.safe_dump(params, sort_keys=False))
    for frame, file in ((run["base"], "pretrained_manifest.csv"), (run["tuned"], "finetuned_manifest.csv")):
        frame[[c for c in frame.columns if c in MANIFEST_COLUMNS]].to_csv(scratch / file, index=False)
    run["history"].to_csv(scratch / "finetune_history.csv", index=False)
    if run.get("diversity") is not None:
        run["diversity"].to_csv(scratch / "diversity.csv", index=False)
    if run.get("sft_rewards"):
        (scratch / "finetune_rewards.csv").write_text(run["sft_rewards"])
    for relative, data in (run.get("images") or {}).items():
        (scratch / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        (scratch / "images" / relative).write_bytes(data)
    old = runs_dir / f".{run['name']}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    scratch.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def archived_commit(name: str, runs_dir: Path) -> str | None:
    """The experiment commit an archived run was collected from (None when it is not archived)."""
    meta = runs_dir / name / "run.json"
    return json.loads(meta.read_text()).get("commit") if meta.exists() else None


def archived_runs(runs_dir: Path, registry: dict) -> list[dict]:
    """Every archived run, its parameters checked against its name (as for an experiment)."""
    runs = []
    for folder in sorted(p for p in runs_dir.glob("claims-*") if p.is_dir()):
        meta = json.loads((folder / "run.json").read_text())
        experiment = parse_experiment_name(folder.name, registry)
        if experiment is None or meta.get("name") != folder.name:
            raise ValueError(f"{folder}: not a claims run's folder (its run.json names {meta.get('name')!r})")
        params = yaml.safe_load((folder / "params.yml").read_text())
        check_params(experiment, params, registry)
        images = {str(p.relative_to(folder / "images")): p.read_bytes() for p in (folder / "images").rglob("*")
                  if p.is_file()}
        rewards, diversity = folder / "finetune_rewards.csv", folder / "diversity.csv"
        runs.append({**experiment, "ref": None, "commit": meta.get("commit"),
                     "diversity": pd.read_csv(diversity) if diversity.exists() else None,
                     "base": pd.read_csv(folder / "pretrained_manifest.csv"),
                     "tuned": pd.read_csv(folder / "finetuned_manifest.csv"),
                     "history": pd.read_csv(folder / "finetune_history.csv"), "params": params["finetune"],
                     "recorded_params": params, "prompts_path": params["prompts"]["path"],
                     "reward_calls": meta.get("reward_calls") or reward_calls(params),
                     "baseline": meta.get("baseline"), "images": images,
                     "sft_rewards": rewards.read_text() if rewards.exists() else None})
    return sorted(runs, key=lambda e: (e["protocol"], _arm_rank(e["arm"]), e["category"] or "", e["seed"]))


def _run_columns(run: dict) -> dict:
    """The columns that say which run a row comes from."""
    return {"arm": run["arm"], "seed": run["seed"], "protocol": run["protocol"], "reward_calls": run["reward_calls"]}


def per_prompt_rows(run: dict) -> pd.DataFrame:
    scores = run["base"].merge(run["tuned"], on=["prompt", "seed"], suffixes=("_base", "_tuned"))
    if len(scores) != len(run["tuned"]):
        raise ValueError(f"{run['name']}: the fine-tuned images are not on the base model's prompts and seeds")
    category = next((c for c in ("category_base", "category") if c in scores.columns), None)
    if category is None:
        scores["category"], category = run["category"], "category"
    table = scores.groupby("prompt").agg(
        split=("split_base", "first"), category=(category, "first"),
        judge_base=("shapes_judge_base", "mean"), judge_tuned=("shapes_judge_tuned", "mean"),
        quality_base=("shapes_quality_base", "mean"), quality_tuned=("shapes_quality_tuned", "mean"),
    ).reset_index()
    if run["category"] is not None:  # the run's category is the one its name and prompt file give
        table["category"] = run["category"]
    if run.get("diversity") is not None:
        table = table.merge(run["diversity"], on="prompt", how="left")
    return table.assign(**_run_columns(run))


def kl_bound(run: dict) -> float:
    reports = run["history"]["kl_bound_nats"].dropna()
    return float(reports.tail(KL_REPORTS).mean()) if len(reports) else float("nan")


def kl_row(run: dict) -> dict:
    return {**_run_columns(run), "category": run["category"], "kl_bound_nats": kl_bound(run)}


def training_rows(run: dict) -> pd.DataFrame:
    history = run["history"]
    if "reward_mean" not in history.columns:  # SFT: no online samples
        return pd.DataFrame()
    g_batch = _rl_setting(run["params"]["rl"], "rollout", "g_batch")
    return pd.DataFrame({**_run_columns(run), "category": run["category"], "round": history["round"],
                         "trajectories": history["round"] * g_batch, "reward": history["reward_mean"]})


def grid_rows(manifest: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The base images a grid shows (and the archive keeps): a single-prompt run's first evaluation seeds;
    a multi-prompt run's first seed of six training prompts, spread over the categories."""
    train = manifest[manifest["split"] == "train"]
    if protocol == "single":
        return train.head(GRID_SEEDS_SINGLE)
    first = train.groupby("prompt", sort=False).head(1)
    first = first.assign(rank=first.groupby("category").cumcount()).sort_values(["rank", "category"])
    return first.head(GRID_PROMPTS).drop(columns="rank")


def comparison_grid(runs: list[dict], scale: int = 4):
    """Rows: the grid images of each prompt (a single-prompt run's category, or the multi-prompt runs' six);
    columns: base and each arm's lowest seed, all from the same noise. Empty where an arm has no run."""
    from PIL import Image, ImageDraw

    groups: dict[str | None, dict[str, dict]] = {}
    for run in runs:
        first = groups.setdefault(run["category"], {})
        if run["arm"] not in first or run["seed"] < first[run["arm"]]["seed"]:
            first[run["arm"]] = run
    arms = sorted({arm for first in groups.values() for arm in first}, key=_arm_rank)
    rows = []  # (label, [image or None per column])
    for category in sorted(groups, key=lambda c: c or ""):
        first = groups[category]
        reference = first[min(first, key=_arm_rank)]
        for _, row in grid_rows(reference["base"], reference["protocol"]).iterrows():
            cells = [reference["images"].get(f"pretrained_samples/{row['file']}")]
            for arm in arms:
                run = first.get(arm)
                if run is None:
                    cells.append(None)
                    continue
                tuned = run["tuned"]
                file = tuned.loc[(tuned["prompt"] == row["prompt"]) & (tuned["seed"] == row["seed"]), "file"]
                cells.append(run["images"].get(f"finetuned_samples/{file.iloc[0]}") if len(file) else None)
            rows.append((f"{row['prompt']} (seed {row['seed']})", cells))
    sample = next(Image.open(io.BytesIO(c)) for _, cells in rows for c in cells if c is not None)
    width, height = sample.width * scale, sample.height * scale
    label_height, columns = 14, ["base", *arms]
    sheet = Image.new("RGB", (width * len(columns), label_height + len(rows) * (height + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * width + 2, 1), name, fill="black")
    for r, (label, cells) in enumerate(rows):
        top = label_height + r * (height + label_height)
        draw.text((2, top + 1), label, fill="black")
        for c, data in enumerate(cells):
            if data is not None:
                image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.NEAREST)
                sheet.paste(image, (c * width, top + label_height))
    return sheet


# --- what the runs cover -----------------------------------------------------------------------------------

def single_prompts(runs: list[dict]) -> dict[str, str]:
    """The one prompt of each category's single-prompt runs; ValueError when runs of a category disagree (the
    prompt file changed between them)."""
    found: dict[str, dict[str, str]] = {}
    for run in runs:
        if run["category"] is not None:
            for prompt in sorted(set(run["base"]["prompt"])):
                found.setdefault(run["category"], {}).setdefault(prompt, run["name"])
    for category, prompts in found.items():
        if len(prompts) > 1:
            raise ValueError(f"single-prompt runs of '{category}' ran on different prompts: "
                             + "; ".join(f"{name}: {prompt!r}" for prompt, name in prompts.items()))
    return {category: next(iter(prompts)) for category, prompts in sorted(found.items())}


def claim_protocols(runs: list[dict]) -> dict[int, str]:
    """Per claim, the protocol its verdict rests on, as the reader should see it."""
    prompts = single_prompts(runs)
    single = ("single prompt: " + "; ".join(f"{c}: {p}" for c, p in prompts.items()) if prompts
              else "single prompt: not run yet")
    paths = sorted({r["prompts_path"] for r in runs if r["category"] is None})
    multi = "multi-prompt: " + (", ".join(paths) if paths else "not run yet")
    return {1: single, 2: single, 3: multi}


def runs_per_arm(runs: list[dict]) -> dict[str, dict]:
    """Per arm: its seeds and each run's reward calls."""
    out: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: (_arm_rank(r["arm"]), r["name"])):
        entry = out.setdefault(run["arm"], {"seeds": [], "sample_budget_per_run": {}})
        entry["seeds"] = sorted({*entry["seeds"], run["seed"]})
        entry["sample_budget_per_run"][run["name"]] = run["reward_calls"]
    return out


def missing_experiments(runs: list[dict]) -> list[str]:
    """The claims' runs not there yet: every claim arm × seed seen (multi-prompt) and × category (single)."""
    names = {r["name"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    wanted = [f"claims-{a}-s{s}" for a in CLAIM_ARMS for s in seeds]
    wanted += [f"claims-{a}-{c}-s{s}" for a in CLAIM_ARMS for c in CATEGORIES for s in seeds]
    return [name for name in wanted if name not in names]


def matrix_compute(runs: list[dict], timing: Path) -> dict:
    """What the collected runs cost, from the shell script's timing file: wall seconds × threads of each run
    (the last line of a name that ran twice)."""
    names = {r["name"] for r in runs}
    table = pd.read_csv(timing) if timing.exists() else pd.DataFrame(columns=["name", "seconds", "threads", "cpu"])
    table = table[table["name"].isin(names)].drop_duplicates("name", keep="last")
    return {"runs_timed": len(table), "runs": len(names),
            "cpu_hours": float((table["seconds"] * table["threads"]).sum() / 3600),
            "threads": sorted({str(t) for t in table["threads"]}), "cpus": sorted({str(c) for c in table["cpu"]}),
            "seconds_per_run": {row.name: float(row.seconds) for row in table.itertuples()}}


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _interval_dict(row: pd.Series) -> dict:
    out = {}
    for key, value in row.items():
        out[key] = value.as_dict() if hasattr(value, "as_dict") else value
    return out


def _of_protocol(table: pd.DataFrame, protocol: str) -> pd.DataFrame:
    return table[table["protocol"] == protocol] if not table.empty else table


# --- the command line --------------------------------------------------------------------------------------

def _tool_commands(args: argparse.Namespace, registry: dict) -> bool:
    """The small commands the shell script calls; True when one ran."""
    if args.arm_overrides is not None:
        print(override_text(run_overrides(args.arm_overrides, args.protocol, registry)))
    elif args.single_prompt_path is not None:
        print(single_prompt_path(args.single_prompt_path))
    elif args.write_single_prompts:
        picked = pick_single_prompts(pd.read_csv(ROOT / args.headroom), pd.read_csv(ROOT / args.shapeseval))
        for path, row in zip(write_single_prompts(picked), picked.itertuples()):
            print(f"{row.category}: {row.prompt!r} (base solve rate {row.solve_rate:.2f}) → {path.relative_to(ROOT)}")
    else:
        return False
    return True


def collect_runs(args: argparse.Namespace, registry: dict) -> list[dict]:
    """Archive every claims experiment not archived yet (or re-run since), then read back every archived run:
    the experiments of this clone and those archived by earlier sessions. Every experiment's parameters are
    checked before anything is written."""
    runs_dir = ROOT / args.runs_dir
    found = [e for e in experiments(registry) if e.get("commit") is None
             or archived_commit(e["name"], runs_dir) != e["commit"]]
    params = {e["name"]: recorded_params(e) for e in found}
    for experiment in found:  # every name checked before any output is loaded or written
        check_params(experiment, params[experiment["name"]], registry)
    for experiment in found:
        archive_run(load_run(experiment, params[experiment["name"]]), runs_dir)
    runs = archived_runs(runs_dir, registry) if runs_dir.exists() else []
    if not runs:
        raise SystemExit("no experiment named claims-<arm>-s<seed> or claims-<arm>-<category>-s<seed> yet: run "
                         "scripts/paper_claims.sh first")
    return runs


def collect(args: argparse.Namespace, registry: dict) -> None:
    runs = collect_runs(args, registry)
    protocols = claim_protocols(runs)
    per_prompt = _concat([per_prompt_rows(r) for r in runs])
    kl = pd.DataFrame([kl_row(r) for r in runs])
    training = _concat([training_rows(r) for r in runs])
    multi, multi_kl = _of_protocol(per_prompt, "multi"), _of_protocol(kl, "multi")
    table = arm_table(multi, multi_kl, "train", args.resamples)
    heldout = arm_table(multi, multi_kl, "heldout", args.resamples)
    single = arm_table(_of_protocol(per_prompt, "single"), _of_protocol(kl, "single"), "train", args.resamples)
    verdicts = [{**v, "protocol": protocols[v["claim"]]} for v in claims(per_prompt, kl, training, "train",
                                                                         args.resamples)]

    figures = ROOT / args.figures
    figures.mkdir(parents=True, exist_ok=True)
    shown = []
    single_runs = [r for r in runs if r["protocol"] == "single"]
    single_training = _of_protocol(training, "single")
    if not single_training.empty:
        training_curves(single_training, by_category=True).save(figures / "single_prompt_reward_curves.png")
        shown.append(("Training reward against reward calls per arm, one panel per category's single prompt "
                      "(band: min–max over seeds; the paper's Figure 7 form).",
                      f"{Path(args.figures).name}/single_prompt_reward_curves.png"))
    rl_single = _of_protocol(kl, "single")
    if not rl_single.empty and len(set(rl_single["arm"]) - {"sft"}) >= 2:
        reward_kl_tradeoff(_of_protocol(per_prompt, "single"), rl_single).save(figures / "reward_kl_tradeoff.png")
        shown.append(("Alignment gain against the KL bound, every single-prompt run (the paper's KL ablation; "
                      "β = 0 for RL without KL, 0.1 for the KL arms, other β from the rl_kl_b<β> arms).",
                      f"{Path(args.figures).name}/reward_kl_tradeoff.png"))
    if single_runs:
        comparison_grid(single_runs).save(figures / "single_prompt_grid.png")
        shown.append(("The same noise for every model: each category's prompt at its first evaluation seeds, base "
                      "then each arm's lowest seed (single-prompt runs).",
                      f"{Path(args.figures).name}/single_prompt_grid.png"))
    multi_runs = [r for r in runs if r["protocol"] == "multi"]
    rewards = [pd.read_csv(io.StringIO(r["sft_rewards"]))["reward"].mean()
               for r in multi_runs if r["arm"] == "sft" and r.get("sft_rewards")]
    base_reward = float(np.mean(rewards)) if rewards else None
    multi_training = _of_protocol(training, "multi")
    if not multi_training.empty:
        training_curves(multi_training, base_reward).save(figures / "training_reward_curves.png")
        shown.append(("Training reward against trajectories sampled, per DPOK arm, multi-prompt runs (the paper's "
                      "Figure 7).", f"{Path(args.figures).name}/training_reward_curves.png"))
    if multi_runs:
        comparison_grid(multi_runs).save(figures / "arms_grid.png")
        shown.append(("The same noise for every model: base, then each arm's first seed, at the first evaluation "
                      "seed of six training prompts (multi-prompt runs).", f"{Path(args.figures).name}/arms_grid.png"))

    settings = {r["name"]: {"arm": r["arm"], "seed": r["seed"], "protocol": r["protocol"], "category": r["category"],
                            "prompts_path": r["prompts_path"], "baseline_commit": r["baseline"],
                            "method": r["params"].get("method", "dpok"), "rl": r["params"]["rl"],
                            "sft": r["params"].get("sft"), "kl_bound_nats": kl_bound(r),
                            "sample_budget_per_run": r["reward_calls"]} for r in runs}
    budget = sorted({r["reward_calls"] for r in runs})
    compute = matrix_compute(runs, ROOT / args.timing)
    result = {
        "experiments": settings,
        "runs_per_arm": runs_per_arm(runs),
        "sample_budget_per_run": budget,
        "arms": {arm: _interval_dict(row) for arm, row in table.iterrows()},
        "arms_heldout": {arm: _interval_dict(row) for arm, row in heldout.iterrows()},
        "arms_single_prompt": {arm: _interval_dict(row) for arm, row in single.iterrows()},
        "claims": verdicts,
        "compute": compute,
        "missing": missing_experiments(runs),
    }
    out = ROOT / args.out_json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    counts = ", ".join(f"{arm_label(a)} × {len(entry['seeds'])} seeds"
                       for a, entry in runs_per_arm(runs).items())
    images = sorted({int(len(r["base"]) / max(1, r["base"]["prompt"].nunique())) for r in runs})
    intro = (
        f"Generated by `python scripts/paper_claims.py` from the DVC experiments of `scripts/paper_claims.sh`, "
        f"archived in `{args.runs_dir}/` ({len(runs)} runs: {counts}). As in the paper, claims 1–2 are judged on "
        "single-prompt runs (one prompt per category, the one whose base solve rate is closest to 0.35 outside "
        "ShapesEval's test split; per category and pooled) and claim 3 on multi-prompt runs. Sample budget per "
        f"run: {', '.join(f'{b:,}' for b in budget)} trajectories, i.e. reward calls; every run is evaluated on "
        f"the evaluation's fixed seeds ({' or '.join(str(i) for i in images)} images per prompt), base and "
        "fine-tuned from the same noise.\n\n"
        "Repeat: `scripts/paper_claims.sh` runs every arm and seed as a DVC experiment (skipping finished and "
        "archived ones; `PROTOCOL=single|multi`, `SEEDS`, `CATEGORIES`, `ROUNDS`, `THREADS` set the matrix), e.g. "
        "`PROTOCOL=single ROUNDS=80 SEEDS=\"0 1 2 3 4\" CATEGORIES=location scripts/paper_claims.sh sft rl rl_kl "
        "rl_kl_v` (claims 1–2) and `ROUNDS=60 SEEDS=\"0 1 2 3 4\" scripts/paper_claims.sh rl_kl rl_kl_v` "
        "(claim 3); then `python scripts/paper_claims.py` archives what finished and rewrites this page. The "
        "budget, SFT's steps and the power were fixed by a pilot before the matrix ran (docs/experiments.md)."
        + (f" Compute: {compute['cpu_hours']:.1f} CPU-hours for the {compute['runs_timed']} runs timed "
           f"(`{args.timing}`; {', '.join(compute['threads'])} thread(s) a run, {', '.join(compute['cpus'])})."
           if compute["runs_timed"] else "")
    )
    (ROOT / args.docs).write_text(results_markdown(table, verdicts, heldout, intro, tuple(shown), single=single))
    for v in verdicts:
        print(f"claim {v['claim']} ({v['protocol']}): {v.get('verdict_text', v['verdict'])} — {v['evidence']}")
    print(f"wrote {args.out_json}, {args.docs}, {args.figures}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", default="data/08_reporting/paper_claims.json")
    parser.add_argument("--docs", default="docs/results.md")
    parser.add_argument("--figures", default="docs/results")
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="the archive of collected runs (git-tracked)")
    parser.add_argument("--timing", default=TIMING, help="seconds per experiment, written by paper_claims.sh")
    parser.add_argument("--resamples", type=int, default=2000)
    tools = parser.add_mutually_exclusive_group()
    tools.add_argument("--arm-overrides", metavar="ARM", help="print the arm's `key=value` overrides and exit")
    parser.add_argument("--protocol", default="multi", choices=("multi", "single"),
                        help="with --arm-overrides: the protocol's settings too (single: conf/shapes_single's)")
    tools.add_argument("--single-prompt-path", metavar="CATEGORY", help="print the category's prompt file and exit")
    tools.add_argument("--write-single-prompts", action="store_true",
                       help="pick each category's single prompt and write its file (never changes an existing one)")
    parser.add_argument("--headroom", default=HEADROOM, help="base solve rates per prompt (prompt, category, "
                                                             "solve_rate)")
    parser.add_argument("--shapeseval", default=SHAPESEVAL, help="ShapesEval's prompts with their split")
    args = parser.parse_args()
    registry = load_arm_registry()
    try:
        if not _tool_commands(args, registry):
            collect(args, registry)
    except ValueError as error:  # bad input: say what, change nothing
        raise SystemExit(f"paper_claims.py: {error}") from None


if __name__ == "__main__":
    main()

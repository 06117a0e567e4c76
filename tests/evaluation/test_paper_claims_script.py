"""scripts/paper_claims.py and scripts/paper_claims.sh on synthetic inputs: the arm table both read, the single
prompt rule, the names and parameters an experiment must match, the collector without Git or DVC, and the
shell script's checks in a sandbox whose `git` and `dvc` only record their calls."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dpok.evaluation.claims import ARMS, BETA_SWEEP_PREFIX, NOT_RUN, SUPPORTED

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "scripts" / "paper_claims.py")
paper_claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_claims)
REGISTRY = paper_claims.load_arm_registry()


def test_the_arm_table_is_the_one_the_library_labels():
    assert tuple(REGISTRY["arms"]) == ARMS and REGISTRY["beta_sweep"]["prefix"] == BETA_SWEEP_PREFIX


def test_arm_overrides_and_their_dvc_text():
    assert paper_claims.arm_overrides("rl", REGISTRY) == {"finetune.rl.kl.weight": 0.0,
                                                           "finetune.rl.value.enabled": False}
    assert paper_claims.arm_overrides("rl_kl_v", REGISTRY) == {}
    assert paper_claims.arm_overrides("rl_kl_b0.3", REGISTRY) == {"finetune.rl.kl.weight": 0.3,
                                                                   "finetune.rl.value.enabled": False}
    paper = paper_claims.override_text(paper_claims.arm_overrides("paper", REGISTRY))
    assert "finetune.rl.policy.clip_range=0.0001" in paper.split() and "finetune.rl.advantage.normalisation=none" in paper
    assert paper_claims.override_text({"a": 1e-05, "b": True, "c": 0.0}) == "a=0.00001 b=true c=0.0"
    for arm in ("foo", "rl_kl_b", "rl_kl_bx", "rl_kl_b-1"):
        with pytest.raises(ValueError, match=f"unknown arm '{arm}'"):
            paper_claims.arm_overrides(arm, REGISTRY)


def _prompt_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    headroom = pd.DataFrame([
        ("a red circle", "color", 0.35), ("a blue circle", "color", 0.30), ("a blue square", "color", 0.40),
        ("two circles", "count", 0.40), ("an unlisted count", "count", 0.30),
        ("a and b", "composition", 0.9), ("x at the top", "location", 0.1), ("y at the top", "location", 0.0),
    ], columns=["prompt", "category", "solve_rate"])
    shapeseval = pd.DataFrame({"prompt": ["a red circle", "a blue circle", "a blue square", "two circles", "a and b"],
                               "split": ["test", "train", "validation", "train", "train"]})
    return headroom, shapeseval


def test_single_prompt_rule_skips_test_prompts_and_breaks_ties_by_text():
    headroom, shapeseval = _prompt_tables()
    picked = paper_claims.pick_single_prompts(headroom, shapeseval).set_index("category")["prompt"]
    # color: the exact 0.35 prompt is a test prompt; 0.30 and 0.40 tie, "a blue circle" sorts first.
    # count: a prompt ShapesEval does not list is not a test prompt.
    assert picked.to_dict() == {"color": "a blue circle", "count": "an unlisted count", "composition": "a and b",
                                "location": "x at the top"}
    with pytest.raises(ValueError, match="category 'location'"):
        paper_claims.pick_single_prompts(headroom[headroom["category"] != "location"], shapeseval)


def test_single_prompt_files_are_written_once_and_never_changed(tmp_path):
    (tmp_path / "data/01_raw/prompts").mkdir(parents=True)
    headroom, shapeseval = _prompt_tables()
    picked = paper_claims.pick_single_prompts(headroom, shapeseval)
    paths = paper_claims.write_single_prompts(picked, tmp_path)
    color = tmp_path / "data/01_raw/prompts/claims_color.csv"
    assert color in paths and color.read_text() == "prompt,category\na blue circle,color\n"
    existing_format = pd.read_csv(ROOT / "data/01_raw/prompts/shapes_single.csv").columns.tolist()
    assert pd.read_csv(color).columns.tolist() == existing_format
    paper_claims.write_single_prompts(picked, tmp_path)  # the same prompts again: fine
    picked.loc[picked["category"] == "color", "prompt"] = "a blue square"
    with pytest.raises(ValueError, match="claims_color.csv"):
        paper_claims.write_single_prompts(picked, tmp_path)
    assert color.read_text() == "prompt,category\na blue circle,color\n"


def test_experiment_names():
    parse = lambda name: paper_claims.parse_experiment_name(name, REGISTRY)
    assert parse("claims-rl_kl_v-s2") == {"name": "claims-rl_kl_v-s2", "arm": "rl_kl_v", "category": None, "seed": 2,
                                          "protocol": "multi"}
    assert parse("claims-rl_kl_b0.1-count-s0")["arm"] == "rl_kl_b0.1"
    assert parse("claims-sft-location-s1")["protocol"] == "single"
    assert parse("tune-lr-s0") is None
    with pytest.raises(ValueError, match="unknown arm 'dpo'"):
        parse("claims-dpo-s0")
    with pytest.raises(ValueError, match="unknown category 'texture'"):
        parse("claims-rl-texture-s0")


def _params(kl_weight=0.01, value=True, seed=0, path="data/01_raw/prompts/shapeseval_train.csv", method="dpok"):
    return {"finetune": {"method": method, "rl": {"seed": seed, "kl": {"weight": kl_weight},
                                                   "value": {"enabled": value},
                                                   "rollout": {"g_batch": 32}, "runtime": {"num_rounds": 25}}},
            "prompts": {"path": path}}


def _set_all(params: dict, dotted: dict) -> None:
    """Write ``{"a.b.c": value}`` settings into the nested ``params``."""
    for key, value in dotted.items():
        *blocks, last = key.split(".")
        target = params
        for block in blocks:
            target = target.setdefault(block, {})
        target[last] = value


def _single_params(seed: int, path: str) -> dict:
    """An rl_kl run's parameters under the single-prompt protocol (conf/shapes_single's settings)."""
    params = _params(value=False, seed=seed, path=path)
    _set_all(params, paper_claims.protocol_overrides("single"))
    return params


def test_recorded_parameters_must_match_the_name():
    check = lambda name, params: paper_claims.check_params(paper_claims.parse_experiment_name(name, REGISTRY), params,
                                                           REGISTRY)
    check("claims-rl-s0", _params(kl_weight=0.0, value=False))
    single = _single_params(seed=1, path="data/01_raw/prompts/claims_count.csv")
    check("claims-rl_kl-count-s1", single)
    with pytest.raises(ValueError, match=r"claims-rl_kl-count-s1: finetune.rl.kl.weight expected 0.1 .*found 0.01"):
        check("claims-rl_kl-count-s1", _params(value=False, seed=1, path="data/01_raw/prompts/claims_count.csv")
              | {"finetune": {**single["finetune"], "rl": {**single["finetune"]["rl"], "kl": {"weight": 0.01}}}})
    check("claims-rl_kl_b0.1-s0", _params(kl_weight=0.1, value=False))
    with pytest.raises(ValueError, match=r"claims-rl-s0: finetune.rl.kl.weight expected 0.0 .*found 0.01"):
        check("claims-rl-s0", _params(value=False))
    with pytest.raises(ValueError, match="claims-rl_kl-s2: finetune.rl.seed expected 2 .*found 0"):
        check("claims-rl_kl-s2", _params(value=False))
    with pytest.raises(ValueError, match=r"prompts.path expected 'data/01_raw/prompts/claims_color.csv'.*claims_count"):
        check("claims-rl_kl-color-s0", _single_params(seed=0, path="data/01_raw/prompts/claims_count.csv"))
    with pytest.raises(ValueError, match="claims-rl_kl-s0: prompts.path expected the multi-prompt set"):
        check("claims-rl_kl-s0", _params(value=False, path="data/01_raw/prompts/claims_count.csv"))
    with pytest.raises(ValueError, match="finetune.method expected 'sft'.*found 'dpok'"):
        check("claims-sft-s0", _params())
    with pytest.raises(ValueError, match="finetune.rl.value.enabled expected False.*found 0"):
        check("claims-rl_kl-s0", _params(value=0))  # a number is not a switch
    params = _params()
    del params["finetune"]["rl"]["kl"]
    with pytest.raises(ValueError, match="found '<absent>'"):
        check("claims-rl-s0", params)


def test_reward_calls_in_both_parameter_layouts():
    assert paper_claims.reward_calls(_params()) == 800
    older = {"finetune": {"rl": {"num_rounds": 25, "g_batch": 16}}}
    assert paper_claims.reward_calls(older) == 400


def _manifest(prompts: list[tuple[str, str, str]], judge: float, quality: float = 0.9, seeds=4) -> pd.DataFrame:
    rng = np.random.default_rng(int(judge * 1000))
    return pd.DataFrame([{"prompt": p, "category": c, "split": s, "seed": 100 + k, "file": f"{i}_{k}.png",
                          "shapes_judge": judge + rng.normal(0, 0.01), "shapes_quality": quality}
                         for i, (p, c, s) in enumerate(prompts) for k in range(seeds)])


MULTI_PROMPTS = [("a red circle", "color", "train"), ("two circles", "count", "train"),
                 ("a blue square", "color", "heldout")]
GAIN = {"sft": 0.0, "rl": 0.1, "rl_kl": 0.1, "rl_kl_v": 0.3, "rl_kl_b0.1": 0.1}


def _fake_run(name: str) -> dict:
    """What load_run returns, without Git or DVC: the arm's judge gain on every prompt."""
    experiment = {**paper_claims.parse_experiment_name(name, REGISTRY), "ref": f"refs/exps/{name}"}
    category = experiment["category"]
    prompts = MULTI_PROMPTS if category is None else [(f"the {category} prompt", category, "train")]
    history = pd.DataFrame({"round": range(1, 11), "reward_mean": np.linspace(0.5, 0.5 + GAIN[experiment["arm"]], 10),
                            "kl_bound_nats": 10.0 + 100 * (experiment["arm"] == "rl")})
    path = "data/01_raw/prompts/shapeseval_train.csv" if category is None else paper_claims.single_prompt_path(category)
    params = _params(seed=experiment["seed"], path=path)
    promised = paper_claims.run_overrides(experiment["arm"], experiment["protocol"], REGISTRY)
    _set_all(params, promised)  # what its name promises
    return {**experiment, "base": _manifest(prompts, 0.4), "tuned": _manifest(prompts, 0.4 + GAIN[experiment["arm"]]),
            "history": history if experiment["arm"] != "sft" else history.drop(columns="reward_mean"),
            "params": params["finetune"], "recorded_params": params, "prompts_path": path, "reward_calls": 800,
            "baseline": "abc"}


def test_rows_carry_protocol_category_and_budget():
    single = paper_claims.per_prompt_rows(_fake_run("claims-rl-count-s1"))
    assert single[["arm", "seed", "category", "protocol", "reward_calls"]].iloc[0].tolist() == ["rl", 1, "count",
                                                                                                 "single", 800]
    multi = paper_claims.per_prompt_rows(_fake_run("claims-rl-s0"))
    assert sorted(multi["category"]) == ["color", "color", "count"] and set(multi["protocol"]) == {"multi"}
    assert multi["judge_tuned"].mean() - multi["judge_base"].mean() == pytest.approx(0.1, abs=0.02)
    training = paper_claims.training_rows(_fake_run("claims-rl-s0"))
    assert training["trajectories"].max() == 320 and set(training["reward_calls"]) == {800}  # 10 rounds × 32


def test_what_the_runs_cover():
    runs = [_fake_run(n) for n in ("claims-sft-s0", "claims-rl-s0", "claims-rl-count-s0", "claims-rl_kl_b0.1-s1")]
    per_arm = paper_claims.runs_per_arm(runs)
    assert list(per_arm) == ["sft", "rl", "rl_kl_b0.1"]
    assert per_arm["rl"] == {"seeds": [0], "sample_budget_per_run": {"claims-rl-count-s0": 800, "claims-rl-s0": 800}}
    missing = paper_claims.missing_experiments(runs)
    assert "claims-rl_kl-s1" in missing and "claims-sft-color-s0" in missing and "claims-rl-s0" not in missing
    assert paper_claims.claim_protocols(runs) == {
        1: "single prompt: count: the count prompt", 2: "single prompt: count: the count prompt",
        3: "multi-prompt: data/01_raw/prompts/shapeseval_train.csv"}
    other = _fake_run("claims-sft-count-s1")
    other["base"] = other["base"].assign(prompt="another count prompt")
    with pytest.raises(ValueError, match="'count' ran on different prompts"):
        paper_claims.single_prompts(runs + [other])


def _collect(tmp_path, monkeypatch, names: list[str], params: dict | None = None) -> dict:
    """Run the collector on fake runs; the JSON it wrote (or the error it raised)."""
    runs = {n: _fake_run(n) for n in names}
    monkeypatch.setattr(paper_claims, "experiments",
                        lambda registry: [{k: runs[n][k] for k in ("name", "arm", "category", "seed", "protocol",
                                                                   "ref")} for n in names])
    recorded = {n: r["recorded_params"] for n, r in runs.items()}
    recorded.update(params or {})
    monkeypatch.setattr(paper_claims, "recorded_params", lambda e: recorded[e["name"]])
    monkeypatch.setattr(paper_claims, "load_run", lambda e, p: runs[e["name"]])
    monkeypatch.setattr(paper_claims, "_git_file", lambda ref, path: "reward\n0.4\n0.5\n")
    monkeypatch.setattr(paper_claims, "comparison_grid", lambda runs: Image.new("RGB", (4, 4)))
    args = argparse.Namespace(out_json=str(tmp_path / "claims.json"), docs=str(tmp_path / "results.md"),
                              figures=str(tmp_path / "figures"), resamples=50,
                              runs_dir=str(tmp_path / "runs"), timing=str(tmp_path / "timing.csv"))
    paper_claims.collect(args, REGISTRY)
    return json.loads((tmp_path / "claims.json").read_text())


def test_collector_with_only_multi_prompt_runs_leaves_claims_one_and_two_not_run(tmp_path, monkeypatch):
    names = [f"claims-{arm}-s{seed}" for arm in ("sft", "rl_kl", "rl_kl_v") for seed in (0, 1)]
    result = _collect(tmp_path, monkeypatch, names)
    claims = {c["claim"]: c for c in result["claims"]}
    assert claims[1]["verdict"] == NOT_RUN and claims[1]["protocol"] == "single prompt: not run yet"
    assert claims[3]["verdict"] == SUPPORTED and claims[3]["protocol"].startswith("multi-prompt: data/01_raw")
    assert result["runs_per_arm"]["rl_kl"] == {"seeds": [0, 1], "sample_budget_per_run": {"claims-rl_kl-s0": 800,
                                                                                          "claims-rl_kl-s1": 800}}
    assert "claims-rl-s0" in result["missing"] and "claims-sft-color-s0" in result["missing"]
    text = (tmp_path / "results.md").read_text()
    assert "**not run yet: rl_kl_v, sft**" in text
    assert (tmp_path / "figures" / "training_reward_curves.png").exists()


def test_collector_judges_single_prompt_runs_per_category(tmp_path, monkeypatch):
    names = [f"claims-{arm}-{c}-s{seed}" for arm in ("sft", "rl_kl_v") for c in ("color", "count")
             for seed in (0, 1, 2)]
    result = _collect(tmp_path, monkeypatch, names)
    claim = result["claims"][0]
    assert claim["verdict"] == SUPPORTED and set(claim["per_category"]) == {"color", "count"}
    assert claim["protocol"] == "single prompt: color: the color prompt; count: the count prompt"
    assert claim["seeds"] == {"rl_kl_v": 3, "sft": 3} and claim["reward_calls_per_run"] == [800]
    assert result["claims"][2]["verdict"] == NOT_RUN and result["arms"] == {} and "sft" in result["arms_single_prompt"]


def test_collector_refuses_a_run_whose_parameters_disagree_and_writes_nothing(tmp_path, monkeypatch):
    wrong = _params(kl_weight=0.01, value=False)  # named rl, but trained with the KL term
    with pytest.raises(ValueError, match=r"claims-rl-s0: finetune.rl.kl.weight expected 0.0 .*found 0.01"):
        _collect(tmp_path, monkeypatch, ["claims-rl-s0", "claims-sft-s0"], {"claims-rl-s0": wrong})
    assert not any(tmp_path.iterdir())


def _png(colour: tuple[int, int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _with_images(run: dict) -> dict:
    """A fake run with the images its grid shows (base grey, fine-tuned coloured by arm)."""
    colour = (40 * (1 + paper_claims._arm_rank(run["arm"])[0]), 0, 0)
    images = {}
    for _, row in paper_claims.grid_rows(run["base"], run["protocol"]).iterrows():
        images[f"pretrained_samples/{row['file']}"] = _png((128, 128, 128))
        images[f"finetuned_samples/{row['file']}"] = _png(colour)
    diversity = pd.DataFrame({"prompt": sorted(set(run["base"]["prompt"])), "diversity_base": 0.2,
                              "diversity_tuned": 0.1})
    return {**run, "images": images, "commit": "c0ffee", "diversity": diversity,
            "sft_rewards": "reward\n0.4\n" if run["arm"] == "sft" else None}


def test_archive_round_trip_keeps_what_the_results_need(tmp_path):
    run = _with_images(_fake_run("claims-sft-count-s1"))
    paper_claims.archive_run(run, tmp_path)
    assert paper_claims.archived_commit("claims-sft-count-s1", tmp_path) == "c0ffee"
    assert paper_claims.archived_commit("claims-rl-count-s1", tmp_path) is None
    (back,) = paper_claims.archived_runs(tmp_path, REGISTRY)
    pd.testing.assert_frame_equal(back["base"], run["base"], check_dtype=False)
    pd.testing.assert_frame_equal(back["tuned"], run["tuned"], check_dtype=False)
    pd.testing.assert_frame_equal(back["history"], run["history"], check_dtype=False)
    assert back["images"] == run["images"] and len(back["images"]) == 2 * paper_claims.GRID_SEEDS_SINGLE
    assert back["params"] == run["params"] and back["prompts_path"] == run["prompts_path"]
    assert (back["arm"], back["category"], back["seed"], back["reward_calls"]) == ("sft", "count", 1, 800)
    assert back["sft_rewards"] == "reward\n0.4\n" and not list(tmp_path.glob(".*"))  # no scratch folder left
    pd.testing.assert_frame_equal(paper_claims.per_prompt_rows(back), paper_claims.per_prompt_rows(run))
    assert paper_claims.per_prompt_rows(back)["diversity_tuned"].tolist() == [0.1]


def test_image_diversity_is_the_mean_pairwise_rms_pixel_difference():
    import io

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(4)]
    encoded = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    pairs = [np.sqrt(np.mean((arrays[i] / 255.0 - arrays[j] / 255.0) ** 2)) for i in range(4) for j in range(i + 1, 4)]
    assert paper_claims.image_diversity(encoded) == pytest.approx(np.mean(pairs), rel=1e-12)
    assert paper_claims.image_diversity([encoded[0]] * 3) == 0.0
    assert np.isnan(paper_claims.image_diversity(encoded[:1]))  # one image: no pair
    black, white = _png((0, 0, 0)), _png((255, 255, 255))
    assert paper_claims.image_diversity([black, white]) == pytest.approx(1.0)


def test_an_archived_run_whose_parameters_disagree_with_its_name_is_refused(tmp_path):
    paper_claims.archive_run(_fake_run("claims-rl-color-s0"), tmp_path)
    params = tmp_path / "claims-rl-color-s0" / "params.yml"
    params.write_text(params.read_text().replace("weight: 0.0", "weight: 0.5", 1))
    with pytest.raises(ValueError, match=r"claims-rl-color-s0: finetune.rl.kl.weight expected 0.0"):
        paper_claims.archived_runs(tmp_path, REGISTRY)


def test_the_collector_reads_the_archive_when_the_experiments_are_gone(tmp_path, monkeypatch):
    names = [f"claims-{arm}-{c}-s{seed}" for arm in ("sft", "rl", "rl_kl", "rl_kl_v") for c in ("color", "count")
             for seed in (0, 1)]
    (tmp_path / "timing.csv").write_text("name,seconds,threads,cpu,finished\nclaims-rl-color-s0,100,1,\"AMD EPYC\",t\n"
                                         "claims-rl-color-s0,1800,2,\"AMD EPYC\",t\nclaims-other-s0,99,1,x,t\n")
    first = _collect(tmp_path, monkeypatch, names)
    assert first["compute"] == {"runs_timed": 1, "runs": 16, "cpu_hours": 1.0, "threads": ["2"], "cpus": ["AMD EPYC"],
                                "seconds_per_run": {"claims-rl-color-s0": 1800.0}}
    monkeypatch.setattr(paper_claims, "experiments", lambda registry: [])  # another clone: no refs
    monkeypatch.setattr(paper_claims, "load_run", lambda e, p: pytest.fail("nothing to load: all archived"))
    args = argparse.Namespace(out_json=str(tmp_path / "again.json"), docs=str(tmp_path / "again.md"),
                              figures=str(tmp_path / "figures"), resamples=50, runs_dir=str(tmp_path / "runs"),
                              timing=str(tmp_path / "timing.csv"))
    paper_claims.collect(args, REGISTRY)
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["claims"] == first["claims"] and again["runs_per_arm"] == first["runs_per_arm"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(names)
    for figure in ("single_prompt_reward_curves.png", "reward_kl_tradeoff.png"):
        assert Image.open(tmp_path / "figures" / figure).size[0] > 400
    assert "reward_kl_tradeoff.png" in (tmp_path / "again.md").read_text()


def test_single_prompt_grid_puts_every_arm_on_the_base_models_noise():
    runs = [_with_images(_fake_run(n)) for n in ("claims-rl-color-s1", "claims-rl-color-s0", "claims-sft-color-s0",
                                                 "claims-rl-count-s0")]
    sheet = paper_claims.comparison_grid(runs, scale=2)
    rows = 2 * paper_claims.GRID_SEEDS_SINGLE  # color's and count's first seeds
    assert sheet.size == (3 * 16, 14 + rows * (16 + 14))  # columns: base, sft, rl
    top = 14 + 14  # first image row
    assert sheet.getpixel((8, top + 8)) == (128, 128, 128)  # base
    assert sheet.getpixel((16 + 8, top + 8)) == (40, 0, 0) and sheet.getpixel((32 + 8, top + 8)) == (80, 0, 0)
    count_top = 14 + paper_claims.GRID_SEEDS_SINGLE * 30 + 14
    assert sheet.getpixel((16 + 8, count_top + 8)) == (255, 255, 255)  # count has no sft run: left empty


# --- the shell script, in a sandbox -----------------------------------------------------------------------

@pytest.fixture
def sandbox(tmp_path):
    """A copy of the scripts beside the real src/, and `git`/`dvc` stand-ins that log their arguments."""
    (tmp_path / "scripts").mkdir()
    for name in ("paper_claims.sh", "paper_claims.py", "claims_arms.yml"):
        (tmp_path / "scripts" / name).write_bytes((ROOT / "scripts" / name).read_bytes())
    (tmp_path / "src").symlink_to(ROOT / "src")
    (tmp_path / "conf").symlink_to(ROOT / "conf")  # the single-prompt protocol reads conf/shapes_single
    (tmp_path / "data/01_raw/prompts").mkdir(parents=True)
    (tmp_path / "data/08_reporting").mkdir(parents=True)
    headroom, shapeseval = _prompt_tables()
    headroom.to_csv(tmp_path / "data/08_reporting/headroom_candidates.csv", index=False)
    shapeseval.to_csv(tmp_path / "data/01_raw/prompts/shapeseval.csv", index=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    archived = tmp_path / "data/08_reporting/paper_claims_runs/claims-rl-count-s1"  # an earlier session's run
    archived.mkdir(parents=True)
    (archived / "run.json").write_text("{}")
    for tool, reply in (("git", ""), ("dvc", "claims-sft-color-s0")):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls.log"\n'
                        f'[ "$1 $2" = "exp list" ] && echo "{reply}"\nexit 0\n')
        stub.chmod(0o755)
    return tmp_path


def _run_script(sandbox: Path, *arms: str, **env: str) -> subprocess.CompletedProcess:
    path = f"{sandbox / 'bin'}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    return subprocess.run(["bash", str(sandbox / "scripts" / "paper_claims.sh"), *arms], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", **env}, timeout=120)


def _calls(sandbox: Path) -> list[str]:
    log = sandbox / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(("arms", "env", "message"), [
    (("rl", "foo"), {}, "unknown arm 'foo'"),
    ((), {"SEEDS": ""}, "SEEDS is empty"),
    ((), {"SEEDS": "0 x"}, "seed 'x' in SEEDS"),
    ((), {"PROTOCOL": "both"}, "unknown PROTOCOL 'both'"),
    ((), {"PROTOCOL": "single", "CATEGORIES": "color texture"}, "unknown category 'texture'"),
])
def test_shell_script_stops_on_bad_input_before_touching_anything(sandbox, arms, env, message):
    result = _run_script(sandbox, *arms, **env)
    assert result.returncode != 0 and message in result.stderr
    assert _calls(sandbox) == [] and not list((sandbox / "data/01_raw/prompts").glob("claims_*.csv"))


def test_shell_script_runs_single_prompt_experiments_with_the_arms_overrides(sandbox):
    result = _run_script(sandbox, "sft", "rl", PROTOCOL="single", SEEDS="0", CATEGORIES="color count", ROUNDS="3")
    assert result.returncode == 0, result.stderr
    assert "claims-sft-color-s0: done, skipped" in result.stdout
    runs = [c for c in _calls(sandbox) if c.startswith("dvc exp run")]
    finetune, prompts = "-S conf/base/parameters_finetune.yml:", "-S conf/base/parameters_prompts.yml:"
    samples = "-S conf/base/parameters_pretrained_samples.yml:"
    settings = lambda arm: "".join(  # noqa: E731
        f"{samples if kv.startswith('pretrained_samples.') else finetune}{kv} "
        for kv in paper_claims.override_text(paper_claims.run_overrides(arm, "single", REGISTRY)).split())
    assert runs == [
        f"dvc exp run -n claims-rl-color-s0 {finetune}finetune.rl.seed=0 {finetune}finetune.rl.runtime.num_rounds=3 "
        f"{settings('rl')}{prompts}prompts.path=data/01_raw/prompts/claims_color.csv evaluate",
        f"dvc exp run -n claims-sft-count-s0 {finetune}finetune.rl.seed=0 {finetune}finetune.rl.runtime.num_rounds=3 "
        f"{settings('sft')}{prompts}prompts.path=data/01_raw/prompts/claims_count.csv evaluate",
        f"dvc exp run -n claims-rl-count-s0 {finetune}finetune.rl.seed=0 {finetune}finetune.rl.runtime.num_rounds=3 "
        f"{settings('rl')}{prompts}prompts.path=data/01_raw/prompts/claims_count.csv evaluate",
    ]
    # conf/shapes_single's settings, then the arm's: rl's β = 0 replaces the protocol's 0.1, sft keeps it
    assert f"{finetune}finetune.rl.kl.weight=0.0 " in runs[0] and "finetune.rl.kl.weight=0.1 " not in runs[0]
    assert f"{finetune}finetune.rl.kl.weight=0.1 " in runs[1] and f"{finetune}finetune.rl.rollout.g_batch=16 " in runs[1]
    assert f"{samples}pretrained_samples.images_per_prompt=64 " in runs[1]  # one prompt: 64 evaluation images
    assert (sandbox / "data/01_raw/prompts/claims_color.csv").read_text() == "prompt,category\na blue circle,color\n"


def test_shell_script_multi_prompt_names_are_unchanged(sandbox):
    result = _run_script(sandbox, "rl_kl_v", "rl_kl_b0.1", SEEDS="4")
    assert result.returncode == 0, result.stderr
    runs = [c.split(" -S ")[0] for c in _calls(sandbox) if c.startswith("dvc exp run")]
    assert runs == ["dvc exp run -n claims-rl_kl_v-s4", "dvc exp run -n claims-rl_kl_b0.1-s4"]
    assert not list((sandbox / "data/01_raw/prompts").glob("claims_*.csv"))


def test_shell_script_skips_a_run_archived_by_an_earlier_session(sandbox):
    result = _run_script(sandbox, "rl", "sft", PROTOCOL="single", SEEDS="1", CATEGORIES="count", ROUNDS="3")
    assert result.returncode == 0, result.stderr
    assert "claims-rl-count-s1: done, skipped" in result.stdout
    timing = (sandbox / "data/08_reporting/paper_claims_timing.csv").read_text().splitlines()
    assert timing[0] == "name,seconds,threads,cpu,finished" and timing[1].startswith("claims-sft-count-s1,0,1,")
    assert [c.split(" -S ")[0] for c in _calls(sandbox) if c.startswith("dvc exp run")] == [
        "dvc exp run -n claims-sft-count-s1"]

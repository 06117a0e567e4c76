"""ShapesEval scoring: the metrics against a hand computation and an independent bootstrap, and the pipeline
end to end on the tiny model (same noise for both models, outputs, nothing run on a bad split)."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import AbstractDataset, DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from dpok.config import merged
from dpok.evaluation import derive_seeds
from dpok.evaluation.sampling import generate_seeded_images
from dpok.evaluation.shapeseval import benchmark_metrics, paired_scores
from dpok.pipelines.shapeseval import create_pipeline
from dpok.prompts.shapeseval import SPLIT_FILE, ShapesEvalFileError, ShapesEvalSplit, build_split, write_split
from dpok.world.grammar import CATEGORIES
from helpers import base_parameters, load_config, local_entry

# --- the metrics on a synthetic score table ------------------------------------------------------------


def _manifests(rows: dict[str, tuple[str, list[float], list[float]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base and fine-tuned manifests from ``{prompt: (category, base scores, fine-tuned scores)}``, one seed
    per score."""
    base, tuned = [], []
    for prompt, (category, base_scores, tuned_scores) in rows.items():
        for seed, (b, t) in enumerate(zip(base_scores, tuned_scores)):
            plan = {"prompt": prompt, "category": category, "split": "test", "seed": seed, "novel_pair": False,
                    "novel_combination": prompt == "k2", "objects": 2 if category == "count" else 1}
            base.append({**plan, "judge": b})
            tuned.append({**plan, "judge": t})
    return pd.DataFrame(base), pd.DataFrame(tuned)


def test_accuracy_overall_and_differences_match_a_hand_computation():
    base, tuned = _manifests({
        # colour: 2 prompts × 4 seeds; correct = judge 1
        "k1": ("color", [1, 0.5, 1, 1], [1, 1, 1, 1]),          # base 3/4, fine-tuned 4/4
        "k2": ("color", [0, 0, 0.5, 1], [1, 0.5, 0.5, 1]),      # base 1/4, fine-tuned 2/4
        # count: 1 prompt × 4 seeds
        "n1": ("count", [1, 0.75, 0.75, 0.25], [1, 1, 1, 0.25]),  # base 1/4, fine-tuned 3/4
    })
    paired = paired_scores(base, tuned.sample(frac=1, random_state=1), {"judge": "reward"}, "judge", 1.0)
    assert paired.groupby("prompt")["correct_base"].sum().to_dict() == {"k1": 3, "k2": 1, "n1": 1}
    metrics = benchmark_metrics(paired, {"judge": "reward"}, solved_score="judge", solved_threshold=1.0,
                                n_resamples=500, confidence=0.95, seed=0)
    json.dumps(metrics, allow_nan=False)
    color, count = metrics["per_category"]["color"]["accuracy"], metrics["per_category"]["count"]["accuracy"]
    assert (color["base"]["mean"], color["finetuned"]["mean"]) == pytest.approx((4 / 8, 6 / 8))
    assert (count["base"]["mean"], count["finetuned"]["mean"]) == pytest.approx((1 / 4, 3 / 4))
    assert color["difference"]["mean"] == pytest.approx(2 / 8) and count["difference"]["mean"] == pytest.approx(2 / 4)
    # GenEval's overall: the mean of the categories, not of the images
    overall, weighted = metrics["overall"]["accuracy"], metrics["image_weighted"]["accuracy"]
    assert overall["base"]["mean"] == pytest.approx((4 / 8 + 1 / 4) / 2)
    assert overall["finetuned"]["mean"] == pytest.approx((6 / 8 + 3 / 4) / 2)
    assert overall["difference"]["mean"] == pytest.approx((2 / 8 + 2 / 4) / 2)
    assert weighted["base"]["mean"] == pytest.approx(5 / 12) and weighted["difference"]["mean"] == pytest.approx(4 / 12)
    assert metrics["overall"]["categories"] == 2 and metrics["overall"]["n"] == 12
    # mean judge, per category
    judge = metrics["per_category"]["color"]["judge"]
    assert judge["base"]["mean"] == pytest.approx((3.5 + 1.5) / 8) and judge["finetuned"]["mean"] == pytest.approx(7 / 8)
    # subsets: the novel composition (k2 tagged so) and the depths, each with its own numbers
    assert metrics["subsets"]["novel_combination"]["accuracy"]["base"]["mean"] == pytest.approx(1 / 4)
    assert metrics["subsets"]["objects_2"]["n_prompts"] == 1 and "novel_pair" not in metrics["subsets"]
    for block in (color, count, overall, weighted):
        for model in ("base", "finetuned", "difference"):
            assert block[model]["ci_low"] <= block[model]["mean"] <= block[model]["ci_high"]


def _simulated(rng: np.random.Generator, effect: float) -> tuple[pd.DataFrame, dict[str, float]]:
    """Three categories of 3, 5 and 8 prompts, 16 seeds each; every prompt's fine-tuned solve rate is its base
    rate + ``effect``. Returns the paired table and the true (expected) accuracies of this prompt set."""
    rows, truth = {}, {}
    for category, n_prompts in (("color", 3), ("count", 5), ("location", 8)):
        rates = rng.uniform(0.1, 0.6, n_prompts)
        truth[category] = float(rates.mean())
        for i, rate in enumerate(rates):
            u = rng.uniform(size=16)
            rows[f"{category}{i}"] = (category, (u < rate).astype(float), (u < rate + effect).astype(float))
    base, tuned = _manifests(rows)
    return paired_scores(base, tuned, {"judge": "reward"}, "judge", 1.0), truth


def test_the_overall_interval_is_the_bootstrap_of_the_mean_of_category_means():
    """Against an independent, loop-by-loop bootstrap: redraw each prompt's seeds, average per category, then
    over categories."""
    paired, _ = _simulated(np.random.default_rng(0), 0.2)
    metrics = benchmark_metrics(paired, {"judge": "reward"}, solved_score="judge", solved_threshold=1.0,
                                n_resamples=2000, confidence=0.95, seed=0)
    rng = np.random.default_rng(123)
    groups = {c: [g["correct_finetuned"].to_numpy() - g["correct_base"].to_numpy() for _, g in cat.groupby("prompt")]
              for c, cat in paired.groupby("category")}
    resampled = [np.mean([np.concatenate([d[rng.integers(len(d), size=len(d))] for d in prompts]).mean()
                          for prompts in groups.values()]) for _ in range(2000)]
    low, high = np.quantile(resampled, [0.025, 0.975])
    got = metrics["overall"]["accuracy"]["difference"]
    assert got["mean"] == pytest.approx(np.mean([np.concatenate(p).mean() for p in groups.values()]))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), abs=0.015)


def test_the_paired_difference_interval_covers_the_true_difference():
    """30 simulated benchmarks with a true +0.2 on every prompt: the 95 % interval of the overall and of each
    category's difference holds +0.2 in at least 80 % of them (each about 95 %, sampling noise only)."""
    rng = np.random.default_rng(7)
    covered = {"overall": 0, "color": 0, "count": 0, "location": 0}
    for _ in range(30):
        paired, _ = _simulated(rng, 0.2)
        metrics = benchmark_metrics(paired, {"judge": "reward"}, solved_score="judge", solved_threshold=1.0,
                                    n_resamples=400, confidence=0.95, seed=0)
        blocks = {"overall": metrics["overall"], **metrics["per_category"]}
        for name, block in blocks.items():
            d = block["accuracy"]["difference"]
            covered[name] += d["ci_low"] <= 0.2 <= d["ci_high"]
    assert all(count >= 24 for count in covered.values()), covered


# --- the pipeline on the tiny model ---------------------------------------------------------------------

# 2 prompts a category → one test prompt each (4), one train prompt each
PROMPTS = ["a red circle", "a blue square", "two red circles", "three blue squares",
           "a red circle and a blue square", "a green triangle and a yellow circle",
           "a red circle on the left", "a blue square at the top"]


def _register_test_rewards() -> None:
    from dpok.rewards import register_reward

    @register_reward("test_pixel_parity", overwrite=True)
    def _pixel_parity():
        """1 where the first pixel's red value is even, else 0.5: about half the images "correct", a pure
        function of the image (so equal images score equally)."""

        def reward(images, prompts):
            return np.where(np.asarray(images)[:, 0, 0, 0] % 2 == 0, 1.0, 0.5)

        return reward

    @register_reward("test_mean_brightness", overwrite=True)
    def _mean_brightness():
        def reward(images, prompts):
            return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) / 255.0

        return reward


TINY = {"images_per_prompt": 2, "batch_size": 3, "device": "cpu", "rewards": ["test_pixel_parity"],
        "quality": ["test_mean_brightness"]}


def _catalog(project_root: Path, root: Path, base_model, lora: Path, split: pd.DataFrame | None = None) -> DataCatalog:
    """The project's shapeseval entries with every path under ``root`` (MLflow left out), tiny settings."""
    _register_test_rewards()
    names = yaml.safe_load((project_root / "conf/base/catalog_shapeseval.yml").read_text())
    resolved = load_config(project_root)["catalog"]
    catalog = DataCatalog.from_config({name: local_entry(resolved[name], root) for name in names})
    params = base_parameters()
    if split is None:
        split = build_split(ShapesEvalSplit.from_dict(params["shapeseval"]["split"]), PROMPTS)
    write_split(split, root / SPLIT_FILE)
    catalog["params:shapeseval"] = merged(params["shapeseval"], {
        "sampling": TINY, "solved_score": "test_pixel_parity", "bootstrap_resamples": 200})
    catalog["params:sampler"] = merged(params["sampler"], {"num_inference_steps": 2})
    catalog["params:pretrained_samples"] = params["pretrained_samples"]
    if base_model is not None:
        catalog["base_model"] = base_model
    catalog["lora"] = MemoryDataset(lora)
    return catalog


@pytest.fixture(scope="module")
def grammar_model():
    """The tiny random-weight pipeline with a tokenizer that knows every word of the grammar."""
    from dpok.models import build_tiny_pipeline
    from dpok.world import vocabulary

    pipeline = build_tiny_pipeline(seed=0, words=tuple(vocabulary()))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def runs(tmp_path_factory, project_root, grammar_model, tiny_lora):
    """The pipeline with a zero LoRA (= the base model) and with a random LoRA, timed."""
    results = {}
    for scale in (0.0, 0.5):
        root = tmp_path_factory.mktemp(f"shapeseval_{scale}")
        started = time.perf_counter()
        SequentialRunner().run(create_pipeline(), _catalog(project_root, root, grammar_model, tiny_lora(scale)))
        results[scale] = (root / "data/08_reporting", time.perf_counter() - started)
    return results


def test_a_zero_lora_redraws_the_base_images_on_the_derived_seeds(runs, grammar_model):
    reporting, seconds = runs[0.0]
    scores = pd.read_csv(reporting / "shapeseval_scores.csv")
    assert len(scores) == 4 * 2 and set(scores["category"]) == set(CATEGORIES)
    params = base_parameters()["shapeseval"]
    seeds = derive_seeds(params["sampling"]["seed"], 2)
    assert sorted(set(scores["seed"])) == sorted(seeds)
    assert params["sampling"]["seed"] != base_parameters()["pretrained_samples"]["seed"]
    # the base scores are those of images drawn directly, one generator per (prompt, seed)
    images = generate_seeded_images(grammar_model, scores["prompt"].tolist(), scores["seed"].tolist(),
                                    num_inference_steps=2, guidance_scale=3.0, eta=1.0, batch_size=1)
    np.testing.assert_allclose(scores["test_mean_brightness_base"], images.mean(axis=(1, 2, 3)) / 255, atol=1e-5)
    # a LoRA whose B matrices are zero is the base model: the same images, so every difference is 0
    for column in ("correct", "test_pixel_parity", "test_mean_brightness"):
        assert scores[f"{column}_base"].equals(scores[f"{column}_finetuned"])
    metrics = json.loads((reporting / "shapeseval.json").read_text())
    assert metrics["overall"]["accuracy"]["difference"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 8}


def test_outputs_match_the_per_image_table(runs):
    reporting, _ = runs[0.5]
    scores = pd.read_csv(reporting / "shapeseval_scores.csv")
    assert (scores["correct_base"] != scores["correct_finetuned"]).any()  # the random LoRA changed images
    assert (scores["correct_base"] == (scores["test_pixel_parity_base"] == 1.0)).all()
    text = (reporting / "shapeseval.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    by_category = scores.groupby("category")[["correct_base", "correct_finetuned"]].mean()
    for category in CATEGORIES:
        block = metrics["per_category"][category]["accuracy"]
        assert block["base"]["mean"] == pytest.approx(by_category.at[category, "correct_base"])
        assert block["finetuned"]["mean"] == pytest.approx(by_category.at[category, "correct_finetuned"])
    assert metrics["overall"]["accuracy"]["finetuned"]["mean"] == pytest.approx(by_category["correct_finetuned"].mean())
    assert metrics["image_weighted"]["accuracy"]["base"]["mean"] == pytest.approx(scores["correct_base"].mean())
    assert metrics["settings"]["images_per_prompt"] == 2 and metrics["timing"]["wall_seconds"] > 0

    report = (reporting / "shapeseval.md").read_text()
    assert "![Accuracy per category](shapeseval.png)" in report
    for label in (*CATEGORIES, "**overall** (mean of categories)", "overall (image-weighted)"):
        assert f"| {label} |" in report, label
    chart = Image.open(reporting / "shapeseval.png")
    assert chart.size[0] > 400 and chart.size[1] > 200


def test_the_pipeline_runs_in_seconds(runs):
    assert max(seconds for _, seconds in runs.values()) < 20, runs


class _ModelNeverLoaded(AbstractDataset):
    def load(self):
        raise AssertionError("the base model was loaded before the split was checked")

    def save(self, data):
        raise NotImplementedError

    def _describe(self):
        return {}


def test_a_bad_split_stops_before_any_model_is_loaded_and_writes_nothing(tmp_path, project_root, tiny_lora):
    split = build_split(ShapesEvalSplit.from_dict(base_parameters()["shapeseval"]["split"]), PROMPTS)
    split.loc[2, "prompt"] = "two red cats"

    catalog = _catalog(project_root, tmp_path, None, tiny_lora(0.0), split)
    catalog["base_model"] = _ModelNeverLoaded()
    with pytest.raises(ShapesEvalFileError, match=rf"ShapesEval split {SPLIT_FILE} \(catalog entry shapeseval_prompts\): line 4: "
                                                  r"Prompt 'two red cats' is outside"):
        SequentialRunner().run(create_pipeline(), catalog)
    assert not (tmp_path / "data/08_reporting").exists()


def test_the_benchmark_settings_come_from_conf_base_and_name_their_keys():
    import dataclasses

    from dpok.evaluation.shapeseval import ShapesEvalConfig, ShapesEvalSampling

    params = base_parameters()
    config = ShapesEvalConfig.from_params(params["shapeseval"], params["sampler"])
    assert config.sampling.images_per_prompt >= 16 and config.solved_score in config.sampling.rewards
    assert config.sampling.sampler.num_inference_steps == params["sampler"]["num_inference_steps"]
    for cls in (ShapesEvalConfig, ShapesEvalSampling):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), cls
    bad = merged(params["shapeseval"], {"solved_score": "shapes_quality"})
    with pytest.raises(ValueError, match=r"shapeseval.solved_score must be one of shapeseval.sampling.rewards "
                                         r"\['shapes_judge'\], got 'shapes_quality'"):
        ShapesEvalConfig.from_params(bad, params["sampler"])
    bad = merged(params["shapeseval"], {"sampling": {"images_per_prompt": 0}})
    with pytest.raises(ValueError, match=r"shapeseval.sampling.images_per_prompt must be an integer >= 1"):
        ShapesEvalConfig.from_params(bad, params["sampler"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) shapeseval.seed"):
        ShapesEvalConfig.from_params({**params["shapeseval"], "seed": 3}, params["sampler"])

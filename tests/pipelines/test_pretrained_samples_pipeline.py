"""The pretrained_samples pipeline on the tiny model: PNGs written lazily, a manifest scored per image."""

import numpy as np
import pandas as pd
import pytest
from kedro.runner import SequentialRunner
from PIL import Image

from dpok.evaluation.manifest import pixel_digest
from dpok.evaluation.sampling import generate_seeded_images
from dpok.pipelines.pretrained_samples import create_pipeline
from dpok.pipelines.pretrained_samples.nodes import sample_pretrained_images
from helpers import split_sampling


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, evaluation_catalog, tiny_base_model):
    root = tmp_path_factory.mktemp("pretrained")
    catalog = evaluation_catalog(root)
    catalog["base_model"] = tiny_base_model
    SequentialRunner().run(create_pipeline(), catalog)
    return root, catalog


def test_pretrained_writes_one_png_per_prompt_and_seed_and_a_manifest(pretrained_run, tiny_base_model):
    root, catalog = pretrained_run
    manifest = pd.read_parquet(root / "data/07_model_output/pretrained_manifest.parquet")
    assert list(manifest.columns) == [
        "prompt", "category", "split", "seed", "file", "jpeg_compressibility", "test_mean_brightness", "pixels_sha256",
    ]
    assert len(manifest) == 5 * 4 and set(manifest["split"]) == {"train", "heldout"}
    folder = root / "data/07_model_output/pretrained_samples"
    assert sorted(p.name for p in folder.iterdir()) == sorted(manifest["file"])

    saved = np.stack([np.asarray(Image.open(folder / f).convert("RGB")) for f in manifest["file"]])
    # The same (prompt, seed) drawn directly, in the same batches, gives the same pixels...
    kwargs = dict(num_inference_steps=3, guidance_scale=3.0, eta=1.0)
    prompts, seeds = manifest["prompt"].tolist(), manifest["seed"].tolist()
    same = generate_seeded_images(tiny_base_model, prompts, seeds, batch_size=6, **kwargs)
    np.testing.assert_array_equal(saved, same)
    assert manifest["pixels_sha256"].tolist() == [pixel_digest(image) for image in saved]
    # ...and in other batches the same noise, up to float32 summation order (one uint8 level at most).
    other = generate_seeded_images(tiny_base_model, prompts, seeds, batch_size=20, **kwargs)
    assert np.abs(saved.astype(int) - other.astype(int)).max() <= 1
    # Scores are those of the saved images.
    from dpok.rewards import get_reward_fn

    jpeg = get_reward_fn("jpeg_compressibility")(saved, manifest["prompt"].tolist())
    np.testing.assert_allclose(manifest["jpeg_compressibility"], jpeg)
    np.testing.assert_allclose(manifest["test_mean_brightness"], saved.astype(float).mean(axis=(1, 2, 3)) / 255)


def test_pretrained_records_the_time_split_and_settings(pretrained_run):
    _, catalog = pretrained_run
    summary = catalog.load("pretrained_sampling_summary")
    timing = summary["timing"]
    assert timing["images"] == 20 and timing["batches"] == 4 and timing["regenerated_batches"] == 0
    assert timing["peak_cached_images"] == 6
    assert 0 < timing["sampling_seconds"] < timing["wall_seconds"]
    assert summary["settings"] == {
        "images_per_prompt": 4, "seed": 0, "num_inference_steps": 3, "guidance_scale": 3.0, "eta": 1.0,
    }
    assert summary["scores"] == {"jpeg_compressibility": "reward", "test_mean_brightness": "quality"}
    metrics = catalog.load("pretrained_mlflow_metrics")
    assert {"pretrained.all.jpeg_compressibility.mean", "pretrained.timing.outside_sampling_share"} <= set(metrics)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eta": 1.5}, r"sampler\.eta must be a number > 0 and <= 1"),
        ({"sampler_overrides": {"eta": 0}}, r"sampler\.eta must be a number > 0 and <= 1.*pretrained_samples\.sampler_overrides"),
        ({"sampler_overrides": {"steps": 3}}, r"unknown key\(s\) sampler\.steps.*pretrained_samples\.sampler_overrides"),
        ({"images_per_prompt": 0}, r"pretrained_samples\.images_per_prompt must be an integer >= 1"),
        ({"bogus": 1}, r"unknown key\(s\) pretrained_samples\.bogus;"),
        ({"rewards": "shapes_judge"}, r"pretrained_samples\.rewards must be a list"),
        ({"rewards": ["no_such_reward"]}, r"unknown reward 'no_such_reward'"),
        ({"quality": ["jpeg_compressibility"]}, r"not also listed under rewards"),
    ],
)
def test_bad_parameters_fail_before_any_image_is_drawn(change, message, tiny_base_model, tiny_sampling):
    prompts = pd.DataFrame({"prompt": ["a red circle"], "category": ["color"], "split": ["train"]})
    with pytest.raises((ValueError, KeyError), match=message):
        sample_pretrained_images(tiny_base_model, prompts, *split_sampling({**tiny_sampling, **change}))

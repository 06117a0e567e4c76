"""Lazy, batch-wise sampling and scoring: every image drawn once, scores right, memory flat."""

import copy
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from kedro_datasets.partitions import PartitionedDataset
from synthetic import FakeSampler, fake_image, mean_pixel

from dpok.evaluation import LazyScoredSamples, derive_seeds, sampling_plan


def test_plan_is_prompt_major_sorted_and_keeps_extra_columns(prompt_table):
    seeds = derive_seeds(0, 3)
    plan = sampling_plan(prompt_table, seeds)
    assert list(plan.columns[:5]) == ["prompt", "category", "split", "seed", "file"] and "rarity" in plan.columns
    assert len(plan) == 15 and plan["file"].is_monotonic_increasing
    assert plan["seed"].tolist()[:3] == seeds and plan["prompt"].iloc[3] == "a blue square"
    with pytest.raises(ValueError, match="repeats prompt"):
        sampling_plan(pd.concat([prompt_table, prompt_table.head(1)]), seeds)
    with pytest.raises(ValueError, match="lacks column"):
        sampling_plan(prompt_table.drop(columns="split"), seeds)


def test_saving_draws_each_batch_once_and_scores_every_image(prompt_table, tmp_path):
    plan = sampling_plan(prompt_table, derive_seeds(1, 4))  # 20 images
    sampler = FakeSampler()
    samples = LazyScoredSamples(plan, sampler, {"brightness": mean_pixel}, batch_size=6)
    dataset = PartitionedDataset(path=str(tmp_path), dataset="pillow.ImageDataset", filename_suffix=".png")
    dataset.save(samples.partitions())
    assert sampler.calls == [6, 6, 6, 2]

    manifest, timing = samples.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == manifest["file"].tolist()
    expected = [fake_image(p, s) for p, s in zip(manifest["prompt"], manifest["seed"])]
    saved = [np.asarray(load()) for _, load in sorted(dataset.load().items())]
    for a, b in zip(saved, expected):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(manifest["brightness"], mean_pixel(np.stack(expected), None))
    assert timing["regenerated_batches"] == 0 and timing["peak_cached_images"] == 6
    parts = ("setup_seconds", "sampling_seconds", "scoring_seconds", "writing_seconds", "other_seconds")
    assert sum(timing[k] for k in parts) == pytest.approx(timing["wall_seconds"])
    assert samples.finish()[0] is manifest  # idempotent


def test_timing_split_with_a_fake_clock(prompt_table):
    now = [0.0]

    def clock():
        return now[0]

    def slow_sampler(prompts, seeds):
        now[0] += 10.0
        return FakeSampler()(prompts, seeds)

    def slow_score(images, prompts):
        now[0] += 1.0
        return mean_pixel(images, prompts)

    plan = sampling_plan(prompt_table.head(2), derive_seeds(0, 2))  # 4 images, 2 batches
    samples = LazyScoredSamples(plan, slow_sampler, {"s": slow_score}, batch_size=2, clock=clock)
    now[0] += 0.5  # setup inside the node
    for load in samples.partitions().values():
        load()
        now[0] += 0.25  # the dataset writes the image
    _, timing = samples.finish()
    assert timing["setup_seconds"] == 0.5
    assert timing["sampling_seconds"] == 20.0 and timing["scoring_seconds"] == 2.0
    assert timing["writing_seconds"] == 1.0 and timing["wall_seconds"] == 23.5
    assert timing["outside_sampling_share"] == pytest.approx(3.5 / 23.5)


def test_out_of_order_access_redraws_but_scores_once(prompt_table):
    plan = sampling_plan(prompt_table.head(2), derive_seeds(0, 3))  # 6 images
    sampler = FakeSampler()
    samples = LazyScoredSamples(plan, sampler, {"b": mean_pixel}, batch_size=3)
    loaders = list(samples.partitions().values())
    for i in (0, 3, 1, 4, 2, 5):
        np.testing.assert_array_equal(np.asarray(loaders[i]()), fake_image(plan["prompt"][i], plan["seed"][i]))
    manifest, timing = samples.finish()
    assert timing["regenerated_batches"] == 4 and len(sampler.calls) == 6
    assert manifest["b"].notna().all()


def test_unsaved_images_and_bad_samplers_fail_clearly(prompt_table):
    plan = sampling_plan(prompt_table.head(1), derive_seeds(0, 2))
    samples = LazyScoredSamples(plan, FakeSampler(), {"b": mean_pixel}, batch_size=2)
    with pytest.raises(RuntimeError, match="never written.*PartitionedDataset"):
        samples.finish()
    bad = LazyScoredSamples(plan, lambda p, s: np.zeros((len(p), 4, 4, 3)), {}, batch_size=2)
    with pytest.raises(ValueError, match="uint8"):
        next(iter(bad.partitions().values()))()
    with pytest.raises(ValueError, match="clash"):
        LazyScoredSamples(plan, FakeSampler(), {"seed": mean_pixel}, batch_size=2)


def test_kedro_memory_dataset_copies_hand_over_the_same_run(prompt_table):
    plan = sampling_plan(prompt_table.head(1), derive_seeds(0, 2))
    samples = LazyScoredSamples(plan, FakeSampler(), {}, batch_size=2)
    assert copy.deepcopy(samples) is samples


def _peak_bytes_while_saving(n_prompts: int, tmp_path) -> int:
    table = pd.DataFrame({"prompt": [f"prompt {i}" for i in range(n_prompts)], "category": "c", "split": "train"})
    plan = sampling_plan(table, derive_seeds(0, 8))
    # A score that does not cast the batch to float64 (8× its size), so the peak shows what is held.
    samples = LazyScoredSamples(plan, FakeSampler(size=128), {"b": lambda x, p: x.mean(axis=(1, 2, 3))}, batch_size=8)
    dataset = PartitionedDataset(
        path=str(tmp_path / str(n_prompts)), dataset="pillow.ImageDataset", filename_suffix=".png"
    )
    tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    dataset.save(samples.partitions())
    samples.finish()
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    return peak


def test_memory_stays_flat_with_the_number_of_images(tmp_path):
    """8× more images (128×128, 48 kB each: 0.8 MB → 6.3 MB of pixels) barely move the peak, which
    stays far below the pixels of all images (what returning them eagerly would hold). What does grow
    is the per-image bookkeeping (a callable, a file name, a few scores: well under 1 kB an image)."""
    _peak_bytes_while_saving(1, tmp_path / "warm-up")  # first-use imports and caches
    small = _peak_bytes_while_saving(2, tmp_path)  # 16 images
    large = _peak_bytes_while_saving(16, tmp_path)  # 128 images
    pixels = 128 * 128 * 3
    assert large - small < 0.05 * (128 - 16) * pixels, (small, large)
    assert large < 0.3 * 128 * pixels, (small, large)

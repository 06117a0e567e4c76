"""The benchmark probe during training: it never changes what is trained, its rows survive a resume, and its
accuracy is GenEval's (the mean of the category accuracies)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dpok.evaluation.probe import BenchmarkProbe, ProbeConfig, accuracy_summary, probe_table
from dpok.rl import train_dpok

PROBE_PROMPTS = pd.DataFrame({"prompt": ["a red circle", "a blue square", "a green circle on the left"],
                              "category": ["color", "color", "location"]})


def _probe(make_config, reward_fn) -> BenchmarkProbe:
    config = make_config({})
    settings = ProbeConfig(every_rounds=2, images_per_prompt=2, seed=3, score="brightness", solved_threshold=0.5,
                           batch_size=4)
    return BenchmarkProbe(PROBE_PROMPTS, settings, config.sampler, reward_fn)


class _NoisyProbe:
    """A probe that also draws from every global random stream, as a careless sampler might."""

    def __init__(self, inner: BenchmarkProbe) -> None:
        self.inner = inner
        self.every_rounds = inner.every_rounds
        self.calls = 0

    def __call__(self, pipeline) -> dict[str, float]:
        self.calls += 1
        torch.rand(5)
        np.random.rand(5)
        return self.inner(pipeline)


def test_the_probe_changes_nothing_that_is_trained_and_its_rows_survive_a_resume(
    make_pipeline, prompts, reward_fn, small_config, tmp_path
):
    config = small_config({"runtime.num_rounds": 3})
    plain = train_dpok(make_pipeline(), prompts, reward_fn, config, tmp_path / "plain", progress=False)
    probe = _NoisyProbe(_probe(small_config, reward_fn))
    probed = train_dpok(make_pipeline(), prompts, reward_fn, config, tmp_path / "probed", progress=False, probe=probe)
    for key, value in plain.lora_state.items():
        assert torch.equal(value, probed.lora_state[key]), key
    assert [row["round"] for row in probed.probe_log] == [0, 2, 3]  # before training, every 2 rounds, the last
    assert probe.calls == 3 and plain.probe_log == []
    first = probed.probe_log[0]
    assert first["images"] == len(PROBE_PROMPTS) * 2 and 0.0 <= first["accuracy"] <= 1.0

    # a run stopped after round 2 and resumed to round 3 has the same rows, none twice, none recomputed
    split = tmp_path / "split"
    train_dpok(make_pipeline(), prompts, reward_fn, small_config({"runtime.num_rounds": 2}), split, progress=False,
               probe=_NoisyProbe(_probe(small_config, reward_fn)))
    again = _NoisyProbe(_probe(small_config, reward_fn))
    resumed = train_dpok(make_pipeline(), prompts, reward_fn, config, split, progress=False, probe=again)
    assert again.calls == 1 and [row["round"] for row in resumed.probe_log] == [0, 2, 3]
    for ours, theirs in zip(resumed.probe_log, probed.probe_log):
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"]) and ours["score_mean"] == pytest.approx(
            theirs["score_mean"])
    table = probe_table(resumed.probe_log, config.rollout.g_batch)
    assert table["reward_calls"].tolist() == [0, 2 * config.rollout.g_batch, 3 * config.rollout.g_batch]


def test_the_probe_draws_the_same_images_every_time(make_pipeline, small_config, reward_fn):
    probe = _probe(small_config, reward_fn)
    pipeline = make_pipeline()
    assert probe(pipeline)["score_mean"] == probe(pipeline)["score_mean"]


def test_accuracy_is_the_mean_of_the_category_accuracies():
    plan = pd.DataFrame({"category": ["color"] * 4 + ["location"] * 2})
    scores = np.array([1.0, 1.0, 1.0, 0.2, 0.0, 1.0])
    summary = accuracy_summary(plan, scores, threshold=1.0)
    assert summary["accuracy_color"] == 0.75 and summary["accuracy_location"] == 0.5
    assert summary["accuracy"] == pytest.approx(0.625)  # not the image mean, 4/6
    assert summary["score_mean"] == pytest.approx((0.8 + 0.5) / 2)


@pytest.mark.parametrize("key, value", [("every_rounds", -1), ("images_per_prompt", 0), ("score", ""),
                                        ("batch_size", 0), ("solved_threshold", "high")])
def test_bad_probe_settings_name_their_key(key, value):
    settings = dict(every_rounds=2, images_per_prompt=2, seed=3, score="shapes_judge", solved_threshold=1.0,
                    batch_size=4)
    with pytest.raises(ValueError, match=f"finetune.probe.{key}"):
        ProbeConfig(**{**settings, key: value})

"""The reward mixture shown in conf/sd15/parameters_finetune.yml is a valid configuration: its names are
registered, its options are the factories', and with tiny files in place of the real ones it builds and
scores, term by term."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from dpok.rewards import weighted_reward
from helpers import ROOT


def mixture_example() -> dict:
    text = (ROOT / "conf/sd15/parameters_finetune.yml").read_text()
    block = re.search(r"# --- mixture example ---\n(.*?)\n\s*# --- end of mixture example ---", text, re.S).group(1)
    return yaml.safe_load("\n".join(re.sub(r"^\s*# ?", "", line) for line in block.splitlines()))


def test_the_sd15_mixture_example_builds_and_reports_each_term(tmp_path):
    from dpok.models.aesthetic import write_tiny_aesthetic
    from dpok.models.clip_scores import write_tiny_clip_rewards
    from dpok.models.imagereward import write_tiny_imagereward

    example = mixture_example()
    assert example["reward"] == {"shapes_judge": 0.0, "imagereward": 1.0, "pickscore": 0.5, "aesthetic": 0.1}
    tiny = {"imagereward": write_tiny_imagereward(tmp_path / "ir"), "aesthetic": write_tiny_aesthetic(tmp_path / "aes"),
            "pickscore": write_tiny_clip_rewards(tmp_path / "clip")["pickscore"]}
    kwargs = {}
    for name, options in example["reward_kwargs"].items():
        assert set(options) <= set(tiny[name]), name  # every option of the example is one the tiny files fill
        assert all(Path(v).parts[:2] == ("data", "06_models") for v in options.values())  # under the models layer
        kwargs[name] = {**tiny[name], "device": "cpu"}
    mixture = weighted_reward(example["reward"], **kwargs)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    prompts = ["a red circle", "a cat and a dog", "a dog on the moon"]
    with mixture.recording() as recorded:
        total = mixture(images, prompts)
    assert set(recorded) == {"imagereward", "pickscore", "aesthetic"}
    terms = {name: parts[0] for name, parts in recorded.items()}
    np.testing.assert_allclose(total, terms["imagereward"] + 0.5 * terms["pickscore"] + 0.1 * terms["aesthetic"])

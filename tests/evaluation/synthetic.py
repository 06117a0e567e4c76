"""Synthetic inputs for the evaluation library tests: a fake sampler, a score, paired manifests."""

import zlib

import numpy as np
import pandas as pd


def fake_image(prompt: str, seed: int, size: int = 8) -> np.ndarray:
    """A uint8 (size, size, 3) image that depends only on (prompt, seed)."""
    rng = np.random.default_rng([zlib.crc32(prompt.encode()), int(seed)])
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class FakeSampler:
    """``fn(prompts, seeds) -> images`` recording each call's size."""

    def __init__(self, size: int = 8):
        self.size = size
        self.calls: list[int] = []

    def __call__(self, prompts, seeds):
        self.calls.append(len(prompts))
        return np.stack([fake_image(p, s, self.size) for p, s in zip(prompts, seeds)])


def mean_pixel(images, prompts):
    return np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3))


def paired_manifests(n_seeds: int = 6, effect: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base and fine-tuned manifests over the same (prompt, seed) pairs, with one score ``r``."""
    rng = np.random.default_rng(seed)
    prompts = pd.DataFrame({
        "prompt": ["p1", "p2", "p3", "p4"],
        "category": ["a", "a", "b", "b"],
        "split": ["train", "train", "train", "heldout"],
    })
    rows = [{**p, "seed": 100 + s, "file": f"p{i:04d}_s{s:02d}.png"}
            for i, p in enumerate(prompts.to_dict("records")) for s in range(n_seeds)]
    base = pd.DataFrame(rows)
    base["r"] = rng.normal(0.5, 0.2, len(base))
    tuned = base.drop(columns="r").copy()
    tuned["r"] = base["r"] + effect + rng.normal(0, 0.05, len(base))
    return base, tuned

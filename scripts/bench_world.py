"""Throughput of the shapes-world judge and quality score on one CPU core (images/s at 32x32).

Usage: python scripts/bench_world.py [--images 2000] [--repeats 3]

Times the best of a few repeats on 2000 clean renders (one batched call each) and, because RL
samples from a half-trained model look worse than renders, on the same renders with Gaussian noise
of std 32 (many small components). Both must stay above 1000 images/s for the RL loop not to wait
on its reward.
"""

from __future__ import annotations

import os

# One core, as on the CI machines: set before numpy loads its BLAS.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from dpok.world import enumerate_prompts, judge, quality, render, sample_scene  # noqa: E402


def best_rate(function: Callable[[], object], count: int, repeats: int) -> float:
    """Images per second of the fastest of ``repeats`` runs (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images per timed call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default: %(default)s)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    all_prompts = enumerate_prompts()
    prompts = [all_prompts[i % len(all_prompts)] for i in range(args.images)]
    start = time.perf_counter()
    scenes = [sample_scene(prompt, rng) for prompt in prompts]
    sample_rate = args.images / (time.perf_counter() - start)
    start = time.perf_counter()
    clean = np.stack([render(scene) for scene in scenes])
    render_rate = args.images / (time.perf_counter() - start)
    noisy = np.clip(clean + rng.normal(0, 32, clean.shape), 0, 255).astype(np.uint8)

    print(f"shapes world, {args.images} images at 32x32, OMP_NUM_THREADS=1, best of {args.repeats}")
    print(f"  sample_scene            {sample_rate:10.0f} scenes/s")
    print(f"  render                  {render_rate:10.0f} images/s")
    for label, images in (("clean renders", clean), ("renders + noise std 32", noisy)):
        judge_rate = best_rate(lambda: judge(images, prompts), args.images, args.repeats)
        quality_rate = best_rate(lambda: quality(images), args.images, args.repeats)
        print(f"  {'judge   (' + label + ')':34s} {judge_rate:10.0f} images/s")
        print(f"  {'quality (' + label + ')':34s} {quality_rate:10.0f} images/s")


if __name__ == "__main__":
    main()

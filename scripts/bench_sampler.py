"""Wall time of DPOK's trajectory sampler against the stock diffusers pipeline call.

    python scripts/bench_sampler.py [PIPELINE_FOLDER] [--batch 16] [--steps 20] [--guidance 3.0]

Both sample the same batch with DDIM η = 1, the same steps and CFG, decode with the VAE and return
numpy images; ``sample_trajectories`` also keeps every latent, the per-step log-probabilities and the
guided noise predictions. Calls alternate (stock, ours, stock, ...) after a warm-up so that drift in
machine load hits both alike; the medians and their ratio are printed, with the median ratio of
back-to-back pairs and the ratio of minima, which are steadier on a shared machine (target: <= 1.05).
Without a folder it uses ``data/06_models/shapes_base`` if that exists, else the tiny random pipeline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dpok.rl import sample_trajectories

DEFAULT_MODEL = Path("data/06_models/shapes_base")


def _build(source: str | None, device: str):
    from dpok.models import build_tiny_pipeline, load_pipeline

    if source is None and (DEFAULT_MODEL / "model_index.json").is_file():
        source = str(DEFAULT_MODEL)
    if source is None:
        pipeline, name = build_tiny_pipeline(seed=0).to(device), "tiny random pipeline (build_tiny_pipeline)"
    else:
        pipeline, name = load_pipeline(source, device=device), source
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, name


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="diffusers pipeline folder (default: see above)")
    parser.add_argument("--prompt", default="a red circle", help="prompt repeated over the batch")
    parser.add_argument("--batch", type=int, default=16, help="images per call")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each first")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    pipeline, name = _build(args.model, args.device)
    prompts = [args.prompt] * args.batch

    def stock():
        pipeline(
            prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, eta=1.0, output_type="np",
            generator=torch.Generator().manual_seed(0),
        )

    def ours():
        sample_trajectories(
            pipeline, prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, eta=1.0,
            generator=torch.Generator().manual_seed(0),
        )

    with torch.no_grad():
        for _ in range(args.warmup):
            stock()
            ours()
        times = {"stock": [], "ours": []}
        for _ in range(args.repeats):
            times["stock"].append(_timed(stock))
            times["ours"].append(_timed(ours))

    stock_median, ours_median = statistics.median(times["stock"]), statistics.median(times["ours"])
    print(f"model: {name} on {args.device} (torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"batch {args.batch}, {args.steps} steps, CFG {args.guidance}, "
          f"{args.repeats} repeats after {args.warmup} warm-up")
    print(f"stock pipeline(...)      median {stock_median * 1000:9.2f} ms  (min {min(times['stock']) * 1000:.2f})")
    print(f"sample_trajectories(...) median {ours_median * 1000:9.2f} ms  (min {min(times['ours']) * 1000:.2f})")
    paired = statistics.median(o / s for o, s in zip(times["ours"], times["stock"]))
    print(f"ratio ours / stock: {ours_median / stock_median:.3f} (medians), {paired:.3f} (median of back-to-back "
          f"pairs), {min(times['ours']) / min(times['stock']):.3f} (minima)")


if __name__ == "__main__":
    main()

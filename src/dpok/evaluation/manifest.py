"""Sample an evaluation set lazily, score it batch by batch, and describe it in a manifest.

The design, and why memory stays flat
-------------------------------------
Kedro saves a node's outputs only after the node returns. A node that drew all images and returned
them would hold every image at once. Instead, :class:`LazyScoredSamples` hands Kedro's
``PartitionedDataset`` (``save_lazily``, the default) one *callable per image*; the dataset calls them
one by one, in sorted partition order, and writes each returned image before asking for the next.
The first callable of a batch draws that whole batch (one pipeline call, one generator per image),
scores it with every configured reward and quality function, keeps the scores (a few floats per
image) and caches the batch; the other callables of the batch read from that cache, and the next
batch replaces it. At any time at most one batch of images is alive, whatever the number of images.
Partition ids are zero-padded (``p0003_s07``), so the dataset's sorted order is the sampling order and
each batch is drawn exactly once (out-of-order access still works: the batch is drawn again, counted
in ``regenerated_batches``).

The same object is then passed (by reference, see :meth:`LazyScoredSamples.__deepcopy__`) to a second
node that calls :meth:`LazyScoredSamples.finish` once the images are on disk: it returns the manifest
(one row per image: prompt, category, split, seed, file, every score) and the time split.

Rejected: returning all images, or their PNG bytes (memory grows with N); a generator node streaming
chunks (an ``overwrite`` PartitionedDataset would wipe the earlier chunks, and the manifest would be
rewritten per chunk); scoring in a later node from the PNGs on disk (decodes every image again and
leaves the sampling time unmeasured); drawing twice (doubles the cost that matters).

Timing
------
``setup_seconds`` runs from the sampling node's start to handing the callables over (loading a LoRA,
moving the model, building the plan); ``sampling_seconds`` is the time inside the pipeline calls;
``scoring_seconds`` the time inside the score functions; ``writing_seconds`` the time between
handing an image to the dataset and being asked for the next one (PNG encoding and writing);
``wall_seconds`` runs from the sampling node's start to :meth:`finish`; ``other_seconds`` is the
rest (the runner between the two nodes, and between the node's return and the first image).
``outside_sampling_share = 1 - sampling_seconds / wall_seconds``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dpok.images import as_uint8_batch

logger = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]
SampleBatchFn = Callable[[list[str], list[int]], np.ndarray]

PLAN_COLUMNS = ("prompt", "category", "split", "seed", "file")
IMAGE_SUFFIX = ".png"


def partition_id(file: str) -> str:
    """The ``PartitionedDataset`` partition id of a manifest ``file`` (the name without ``.png``)."""
    return file[: -len(IMAGE_SUFFIX)] if file.endswith(IMAGE_SUFFIX) else file


def sampling_plan(prompts: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """One row per (prompt, seed), prompt-major: prompt, category, split, seed, file, plus any extra
    columns of the prompt table (e.g. rarity). ``file`` is the image's name in the sample folder."""
    missing = [c for c in ("prompt", "category", "split") if c not in prompts.columns]
    if missing:
        raise ValueError(f"the prompt table lacks column(s) {missing}; run the prompts pipeline first")
    if prompts.empty:
        raise ValueError("the prompt table is empty: nothing to evaluate")
    duplicated = prompts["prompt"][prompts["prompt"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"the prompt table repeats prompt(s) {duplicated[:5]}; each prompt must appear once")
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct")
    prompt_width = max(4, len(str(len(prompts) - 1)))
    seed_width = max(2, len(str(len(seeds) - 1)))
    table = prompts.reset_index(drop=True)
    rows = []
    for p, record in enumerate(table.to_dict("records")):
        for s, seed in enumerate(seeds):
            rows.append({**record, "seed": seed, "file": f"p{p:0{prompt_width}d}_s{s:0{seed_width}d}{IMAGE_SUFFIX}"})
    plan = pd.DataFrame(rows)
    extra = [c for c in plan.columns if c not in PLAN_COLUMNS]
    return plan[list(PLAN_COLUMNS) + extra]


def check_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``plan`` with a clean index, or a ValueError when a column is missing or a file repeats."""
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise ValueError(f"a sampling plan needs columns {list(PLAN_COLUMNS)}; missing {missing}")
    if plan["file"].duplicated().any():
        repeated = plan["file"][plan["file"].duplicated()].iloc[0]
        raise ValueError(f"the sampling plan repeats file names, e.g. {repeated!r}")
    order = plan["file"].map(partition_id).tolist()
    if order != sorted(order):
        # PartitionedDataset saves in sorted order; any other order would draw batches repeatedly.
        raise ValueError("the sampling plan's files must be in sorted order (the order the dataset saves them)")
    return plan.reset_index(drop=True).copy()


class LazyScoredSamples:
    """The images of a sampling plan, produced batch by batch for a lazily saving PartitionedDataset.

    Args:
        plan: Rows as made by :func:`sampling_plan`, in sorted ``file`` order.
        sample_batch: ``fn(prompts, seeds) -> uint8 (b, H, W, 3)``; each image must depend only on its
            (prompt, seed) (see :func:`dpok.evaluation.sampling.iter_seeded_images`).
        score_fns: ``{name: fn(images, prompts) -> (b,) scores}``; each becomes a manifest column.
        batch_size: Images per ``sample_batch`` call (and per scoring call).
        started: ``time.perf_counter()`` at the start of the node (defaults to now), for ``wall_seconds``.
        clock: The clock (tests pass a fake one).
    """

    def __init__(
        self,
        plan: pd.DataFrame,
        sample_batch: SampleBatchFn,
        score_fns: Mapping[str, ScoreFn],
        batch_size: int,
        *,
        started: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        clash = sorted(set(score_fns) & set(plan.columns))
        if clash:
            raise ValueError(f"score name(s) {clash} clash with manifest columns; rename the score")
        self._plan = check_plan(plan)
        self._prompts = self._plan["prompt"].astype(str).tolist()
        self._seeds = [int(s) for s in self._plan["seed"]]
        self._sample_batch: SampleBatchFn | None = sample_batch
        self._score_fns = dict(score_fns)
        self._batch_size = int(batch_size)
        self._n_batches = -(-len(self._plan) // self._batch_size)
        self._scores = {name: np.full(len(self._plan), np.nan) for name in self._score_fns}
        self._digests = [""] * len(self._plan)
        self._scored = np.zeros(self._n_batches, dtype=bool)
        self._served = np.zeros(len(self._plan), dtype=bool)
        self._cache_index: int | None = None
        self._cache: np.ndarray | None = None
        self._clock = clock
        self._started = clock() if started is None else float(started)
        self._started_unix = time.time() - (clock() - self._started)
        self._last_return: float | None = None
        self._handed_over: float | None = None
        self._seconds = {"sampling": 0.0, "scoring": 0.0, "writing": 0.0}
        self._regenerated = 0
        self._peak_cached_images = 0
        self._finished: tuple[pd.DataFrame, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self._plan)

    def __deepcopy__(self, memo: dict) -> LazyScoredSamples:
        # A handle on a run in progress: the images are drawn while the *original* object's callables
        # are saved, so a copy (Kedro's MemoryDataset deep-copies unknown types by default) would be
        # detached from them and report nothing. Copying hands over the same handle.
        return self

    @property
    def plan(self) -> pd.DataFrame:
        return self._plan.copy()

    def partitions(self) -> dict[str, Callable[[], Image.Image]]:
        """``{partition id: callable returning the PIL image}`` for a PartitionedDataset (lazy saving)."""
        self._handed_over = self._clock()
        return {partition_id(file): self._loader(i) for i, file in enumerate(self._plan["file"])}

    def _loader(self, index: int) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            return self.image(index)

        return load

    def image(self, index: int) -> Image.Image:
        """Image ``index`` of the plan (drawing and scoring its batch first if it is not the cached one)."""
        now = self._clock()
        if self._last_return is not None:
            self._seconds["writing"] += now - self._last_return
        batch = index // self._batch_size
        if self._cache_index != batch:
            self._produce(batch)
        image = Image.fromarray(self._cache[index - batch * self._batch_size])
        self._served[index] = True
        self._last_return = self._clock()
        return image

    def _produce(self, batch: int) -> None:
        if self._sample_batch is None:
            raise RuntimeError("these samples are finished; the sampler was released")
        start, stop = batch * self._batch_size, min((batch + 1) * self._batch_size, len(self._plan))
        prompts, seeds = self._prompts[start:stop], self._seeds[start:stop]
        self._cache = None  # release the previous batch before drawing the next
        t0 = self._clock()
        images = as_uint8_batch(self._sample_batch(prompts, seeds), stop - start, "the sampler")
        t1 = self._clock()
        self._seconds["sampling"] += t1 - t0
        if self._scored[batch]:
            self._regenerated += 1
            logger.warning("batch %d drawn again (images were requested out of order)", batch)
        else:
            for name, fn in self._score_fns.items():
                scores = np.asarray(fn(images, prompts), dtype=np.float64)
                if scores.shape != (stop - start,):
                    raise ValueError(f"score {name!r} returned shape {scores.shape}; expected ({stop - start},)")
                self._scores[name][start:stop] = scores
            self._digests[start:stop] = [pixel_digest(image) for image in images]
            self._scored[batch] = True
            self._seconds["scoring"] += self._clock() - t1
        self._cache, self._cache_index = images, batch
        self._peak_cached_images = max(self._peak_cached_images, len(images))

    def finish(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The manifest and the timing, once every image was handed out (idempotent).

        Releases the sampler and the cached batch. Raises when an image was never requested: the
        callables were not saved (a MemoryDataset instead of the PartitionedDataset, or a failed save).
        """
        if self._finished is not None:
            return self._finished
        missing = np.flatnonzero(~self._served)
        if missing.size:
            raise RuntimeError(
                f"{missing.size} of {len(self._plan)} images were never written (first: "
                f"{self._plan['file'].iloc[missing[0]]!r}); the samples output must be a PartitionedDataset "
                "that calls the lazy callables when it saves"
            )
        end = self._clock()
        if self._last_return is not None:
            self._seconds["writing"] += end - self._last_return  # the last image's save
        wall = max(end - self._started, 1e-12)
        setup = (self._handed_over if self._handed_over is not None else self._started) - self._started
        measured = setup + sum(self._seconds.values())
        timing = {
            "images": len(self._plan),
            "batches": self._n_batches,
            "batch_size": self._batch_size,
            "setup_seconds": setup,
            "sampling_seconds": self._seconds["sampling"],
            "scoring_seconds": self._seconds["scoring"],
            "writing_seconds": self._seconds["writing"],
            "other_seconds": max(wall - measured, 0.0),
            "wall_seconds": wall,
            "outside_sampling_share": 1.0 - self._seconds["sampling"] / wall,
            "images_per_second": len(self._plan) / max(self._seconds["sampling"], 1e-12),
            "regenerated_batches": self._regenerated,
            "peak_cached_images": self._peak_cached_images,
            "started_unix": self._started_unix,
        }
        manifest = self._plan.copy()
        for name, values in self._scores.items():
            manifest[name] = values
        manifest[DIGEST_COLUMN] = self._digests
        self._sample_batch, self._cache, self._cache_index = None, None, None
        self._finished = (manifest, timing)
        return self._finished


def score_means(manifest: pd.DataFrame, score_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean of each score over all images and per split (for logs and MLflow)."""
    result = {"all": {name: float(manifest[name].mean()) for name in score_names}}
    for split, group in manifest.groupby("split", sort=True):
        result[str(split)] = {name: float(group[name].mean()) for name in score_names}
    return result


DIGEST_COLUMN = "pixels_sha256"
"""Manifest column: SHA-256 (first 16 hex digits) of each image's uint8 RGB pixels, so an image set and a
manifest from different runs (a run killed between writing them) are told apart."""


def pixel_digest(image: np.ndarray | Image.Image) -> str:
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image,
                                             dtype=np.uint8))
    return hashlib.sha256(pixels.tobytes()).hexdigest()[:16]


def check_saved(manifest: pd.DataFrame, saved: Mapping[str, Any], label: str, rerun: str | None = None) -> None:
    """Raise when an image of ``manifest`` is not among the ``saved`` partitions (as loaded from disk) or,
    when the manifest has pixel digests, differs from the image the manifest describes."""
    fix = f" Rerun `{rerun}` to write both again." if rerun else ""
    missing = [f for f in manifest["file"] if partition_id(f) not in saved]
    if missing:
        raise RuntimeError(f"{len(missing)} {label} image(s) missing on disk, e.g. {missing[0]!r}.{fix}")
    if DIGEST_COLUMN not in manifest.columns:
        return
    differ = [file for file, digest in zip(manifest["file"], manifest[DIGEST_COLUMN])
              if pixel_digest(_loaded(saved[partition_id(file)])) != digest]
    if differ:
        raise RuntimeError(
            f"{len(differ)} of {len(manifest)} {label} image(s) on disk are not the ones their manifest describes "
            f"(first: {differ[0]!r}): the images and the manifest come from different runs, as when a run is "
            f"stopped between writing them.{fix}"
        )


def _loaded(partition: Any) -> Image.Image:
    return partition() if callable(partition) else partition


def sample_set_summary(
    manifest: pd.DataFrame, timing: Mapping[str, Any], settings: Mapping[str, Any], score_kinds: Mapping[str, str],
    label: str,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The JSON summary of a sample set (settings, scores, timing, means) and the same numbers as
    MLflow metrics (``{key: {"value", "step"}}``, keys prefixed with ``label``)."""
    means = score_means(manifest, list(score_kinds))
    summary = {"settings": dict(settings), "scores": dict(score_kinds), "timing": dict(timing), "means": means}
    metrics = {f"{label}.{split}.{name}.mean": {"value": value, "step": 0}
               for split, values in means.items() for name, value in values.items()}
    for key in ("setup_seconds", "sampling_seconds", "scoring_seconds", "writing_seconds", "wall_seconds",
                "outside_sampling_share"):
        metrics[f"{label}.timing.{key}"] = {"value": float(timing[key]), "step": 0}
    return summary, metrics


def log_sample_set(summary: Mapping[str, Any], label: str) -> None:
    """One log line for the time split and one per split for the score means."""
    timing = summary["timing"]
    logger.info(
        "%s samples: %d images; sampling %.1f s, scoring %.1f s, writing %.1f s (%.0f %% of %.1f s outside sampling)",
        label, timing["images"], timing["sampling_seconds"], timing["scoring_seconds"], timing["writing_seconds"],
        100 * timing["outside_sampling_share"], timing["wall_seconds"],
    )
    for split, values in summary["means"].items():
        logger.info("%s samples, %s: %s", label, split, {k: round(v, 4) for k, v in values.items()})


def finish_sample_set(
    samples: LazyScoredSamples, saved: Mapping[str, Any], settings: Mapping[str, Any], score_kinds: Mapping[str, str],
    name: str, label: str,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Once the catalog has written every PNG: the manifest (checked against what was saved), the
    sampling summary (settings, timing, score means) and the same numbers as MLflow metrics."""
    manifest, timing = samples.finish()
    check_saved(manifest, saved, label.lower())
    summary, metrics = sample_set_summary(manifest, timing, settings, score_kinds, name)
    log_sample_set(summary, label)
    return manifest, summary, metrics

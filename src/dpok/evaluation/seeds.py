"""The evaluation seed list: N seeds derived from one base seed, the same for every model.

Every image of the evaluation set is drawn from its own torch generator seeded with one of these
seeds (:func:`dpok.evaluation.sampling.iter_seeded_images`), so the base model (``pretrained``) and
the fine-tuned model (``evaluate``) see exactly the same initial noise for a given prompt and seed,
and a difference between their images is due to the model alone.

The seeds come from ``numpy.random.SeedSequence(base_seed)`` rather than ``base_seed + i`` so that
they do not coincide with the small consecutive seeds a training loop or a quick experiment tends to
use: evaluating on the noise the policy was trained on would flatter it.
"""

from __future__ import annotations

import numpy as np

# Kept below 2**31 so the seeds are valid for every consumer (torch, numpy, JavaScript, CSV tools).
_SEED_MASK = 0x7FFFFFFF


def derive_seeds(base_seed: int, n: int) -> list[int]:
    """``n`` distinct non-negative seeds (< 2**31), a pure function of ``base_seed`` and ``n``.

    The list for a smaller ``n`` is a prefix of the list for a larger one, so raising the number of
    images per prompt keeps the images already drawn.
    """
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
        raise ValueError(f"base seed must be a non-negative integer, got {base_seed!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of seeds must be a positive integer, got {n!r}")
    seeds: list[int] = []
    seen: set[int] = set()
    # Draw in a stream (one generate_state call per extension) and skip the rare duplicate, so the
    # list stays a prefix-stable function of base_seed.
    state = np.random.SeedSequence(int(base_seed)).generate_state(2 * int(n) + 8, dtype=np.uint32)
    for value in state:
        seed = int(value) & _SEED_MASK
        if seed not in seen:
            seen.add(seed)
            seeds.append(seed)
            if len(seeds) == n:
                return seeds
    raise RuntimeError(f"could not derive {n} distinct seeds from base seed {base_seed}")  # pragma: no cover

"""A registry of reward functions, chosen by name from configuration (the ddpo-pytorch pattern).

Every reward has one signature, ``fn(images, prompts) -> np.ndarray`` (float64, one score per
image). The registry stores *factories*, ``factory(**kwargs) -> fn``, so a reward can be configured
(e.g. a JPEG quality) and can load what it needs once, when it is built, not on every call. Modules
register their rewards on import with :func:`register_reward`; ``dpok.rewards`` imports the built-in
ones, and other modules (e.g. an ImageReward or aesthetic wrapper) can add theirs the same way.

:func:`get_reward_fn` wraps every reward so that a wrong number of scores or a NaN/inf score raises
at once, instead of silently poisoning an advantage estimate many steps later. :func:`weighted_reward`
sums rewards by weight and can record each term's scores, which :func:`reward_term_metrics` reports per round
(``reward_mean/<name>``, ``reward_std/<name>``: the history CSV, MLflow and the learning curves).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from dpok.images import to_image_batch

RewardFn = Callable[[Any, Sequence[str]], np.ndarray]
RewardFactory = Callable[..., RewardFn]

_REGISTRY: dict[str, RewardFactory] = {}


class UnknownRewardError(KeyError):
    """A reward name that is not registered."""

    def __str__(self) -> str:  # KeyError would show the message with quotes around it
        return str(self.args[0])


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator registering a reward factory under ``name``.

    Raises:
        ValueError: ``name`` is empty or already registered (pass ``overwrite=True`` to replace it).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward name must be a non-empty str, got {name!r}")

    def decorator(factory: RewardFactory) -> RewardFactory:
        if not callable(factory):
            raise TypeError(f"register_reward({name!r}) decorates a factory function, got {type(factory).__name__}")
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not factory:
            raise ValueError(f"a reward named {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_rewards() -> list[str]:
    """Names of all registered rewards, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> RewardFactory:
    if name not in _REGISTRY:
        raise UnknownRewardError(
            f"unknown reward {name!r}; available rewards: {', '.join(available_rewards()) or '(none)'}. "
            "Use one of these names, or import the module that registers it (modules register their "
            "rewards with @register_reward on import)."
        )
    return _REGISTRY[name]


def checked_scores(name: str, scores: Any, num_prompts: int) -> np.ndarray:
    """``scores`` as a float64 ``(num_prompts,)`` array, or a ValueError naming the reward."""
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (num_prompts,):
        raise ValueError(
            f"reward {name!r} returned scores of shape {array.shape}; expected ({num_prompts},), one per image"
        )
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"reward {name!r} returned {bad.size} non-finite score(s) (NaN/inf) at indices {bad[:10].tolist()}; "
            "rewards must be finite"
        )
    return array


def get_reward_fn(name: str, **kwargs: Any) -> RewardFn:
    """Build the reward registered as ``name`` with ``kwargs`` for its factory.

    Raises:
        UnknownRewardError: (a KeyError) ``name`` is not registered; the message lists the names.
        TypeError: ``kwargs`` do not fit the factory; the message lists what it accepts.
    """
    factory = _factory(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise TypeError(
            f"reward {name!r} does not accept {sorted(kwargs)}: {error}; its options: {signature}"
        ) from None
    reward = factory(**kwargs)

    def checked_reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, one per image, got a single str; wrap it: [prompt]")
        return checked_scores(name, reward(images, prompts), len(prompts))

    checked_reward.__name__ = f"reward_{name}"
    checked_reward.__doc__ = f"The {name!r} reward (validated: one finite float64 score per image)."
    return checked_reward


class WeightedReward:
    """``sum_i weight_i * reward_i(images, prompts)``: a reward (call it like one) that can also record each
    term's unweighted scores (:meth:`recording`), so a training loop can report which term moved
    (:func:`reward_term_metrics`)."""

    def __init__(self, parts: Sequence[tuple[str, RewardFn, float]]) -> None:
        self.parts = list(parts)
        self.weights = {name: weight for name, _, weight in self.parts}
        self.label = " + ".join(f"{weight:g}*{name}" for name, _, weight in self.parts)
        self.__name__ = "weighted_reward"
        self.__doc__ = f"Weighted reward {self.label}."
        self._recorded: dict[str, list[np.ndarray]] | None = None

    def __call__(self, images: Any, prompts: Sequence[str]) -> np.ndarray:
        scores = {name: reward(images, prompts) for name, reward, _ in self.parts}
        total = checked_scores(self.label, sum(weight * scores[name] for name, _, weight in self.parts), len(prompts))
        if self._recorded is not None:  # kept only once the whole batch scored
            for name, values in scores.items():
                self._recorded[name].append(values)
        return total

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, list[np.ndarray]]]:
        """Within the block, each call appends every term's unweighted scores to the yielded
        ``{name: [scores of call 1, ...]}``; other calls (e.g. a value function's features) are not kept."""
        if self._recorded is not None:
            raise RuntimeError(f"{self.label}: already recording")
        self._recorded = {name: [] for name in self.weights}
        try:
            yield self._recorded
        finally:
            self._recorded = None


@contextlib.contextmanager
def reward_term_metrics(reward_fn: Any, gather: Callable[[list[Any]], list[Any]] = list) -> Iterator[dict[str, float]]:
    """Record the calls of the block; after it, the yielded dict holds ``reward_mean/<name>`` and
    ``reward_std/<name>``: each term's unweighted mean and standard deviation over those calls, for a
    :class:`WeightedReward` of two or more terms (nothing otherwise: with one term the total says it all).
    ``gather`` collects every process's scores (:meth:`dpok.rl.distributed.Ranks.gather`); it is called only
    if the block succeeds."""
    metrics: dict[str, float] = {}
    if not isinstance(reward_fn, WeightedReward) or len(reward_fn.parts) < 2:
        yield metrics
        return
    with reward_fn.recording() as recorded:
        yield metrics
    local = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in recorded.items()}
    gathered = gather([local])
    for name in local:
        scores = np.concatenate([terms[name] for terms in gathered])
        metrics[f"reward_mean/{name}"] = float(scores.mean()) if scores.size else math.nan
        metrics[f"reward_std/{name}"] = float(scores.std()) if scores.size else math.nan


def weighted_reward(weights: Mapping[str, float], **reward_kwargs: Mapping[str, Any]) -> WeightedReward:
    """``sum_i weight_i * reward_i(images, prompts)`` over the named rewards (a :class:`WeightedReward`).

    Args:
        weights: ``{reward name: weight}``; finite weights, at least one non-zero. A reward of weight 0 is
            not built (its name must still be registered): an environment whose parameters merge into
            base's turns a base reward off this way.
        reward_kwargs: per-reward factory options, keyed by reward name, e.g.
            ``weighted_reward({"shapes_judge": 1.0, "jpeg_compressibility": 0.1},
            jpeg_compressibility={"quality": 90})``.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"weighted_reward needs a non-empty {{name: weight}} mapping, got {weights!r}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"weighted_reward: the weight of {name!r} must be a finite number, got {weight!r}")
        _factory(name)  # an unknown name is an error even at weight 0
    stray = sorted(set(reward_kwargs) - set(weights))
    if stray:
        raise ValueError(
            f"weighted_reward: options given for {stray}, which have no weight; weighted: {sorted(weights)}"
        )
    weights = {name: float(weight) for name, weight in weights.items() if weight != 0}
    if not weights:
        raise ValueError("weighted_reward: every weight is 0; give at least one reward a non-zero weight")
    return WeightedReward(
        [(name, get_reward_fn(name, **dict(reward_kwargs.get(name, {}))), weight) for name, weight in weights.items()]
    )


def check_batch_size(reward: str, batch_size: Any) -> None:
    """A reward's ``batch_size`` option must be a positive integer (checked when the reward is built)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{reward}: batch_size must be a positive integer, got {batch_size!r}")


def lazily_loaded_reward(
    load: Callable[[], Any], score: Callable[[Any, np.ndarray, list[str]], np.ndarray]
) -> RewardFn:
    """A reward whose model loads on the first call (``load()``, once), then scores each batch with
    ``score(model, uint8 images (N, H, W, 3), prompts)``; one prompt per image."""
    model = None

    def reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        nonlocal model
        batch = to_image_batch(images)
        if len(prompts) != len(batch):
            raise ValueError(f"got {len(batch)} images but {len(prompts)} prompts; pass exactly one prompt per image")
        if model is None:
            model = load()
        return score(model, batch, list(prompts))

    return reward

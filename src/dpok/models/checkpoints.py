"""Reward-model files: check a configured source before anything loads, load weights, check their keys.

What both reward models (:mod:`dpok.models.aesthetic`, :mod:`dpok.models.imagereward`) need around their
weights, so that a wrong option fails when the reward is built, naming the option and the fix, and a
wrong file fails before anything is loaded, naming the keys:

- :func:`check_device_and_dtype`: a reward's ``device``/``dtype`` options, validated without touching a GPU;
- :func:`resolve_file`, :func:`resolve_pretrained`: a local file, or a ``save_pretrained`` folder or hub
  id (a hub id offline only if it is in the hub cache);
- :func:`load_weights_file`: a flat state dict from ``.safetensors`` or a torch pickle (``weights_only``);
- :func:`check_state_dict`: strict keys and shapes, raising :class:`CheckpointMismatchError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from dpok.devices import check_device_name, check_dtype_name


class CheckpointMismatchError(ValueError):
    """A weights file whose keys or shapes are not those the model expects (nothing was loaded)."""


# --- devices, dtypes, sources ----------------------------------------------------------------------


def check_device_and_dtype(reward: str, device: str, dtype: str) -> None:
    """Validate the ``device`` and ``dtype`` options of a reward without touching a GPU."""
    check_device_name(f"{reward}: device", device)
    check_dtype_name(f"{reward}: dtype", dtype)


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "0").lower() in ("1", "true", "yes") for name in flags)


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return (
        not source.startswith((".", "/", "~"))
        and 1 <= len(parts) <= 2
        and all(p and all(c.isalnum() or c in "-_." for c in p) for p in parts)
    )


def resolve_file(path: str, reward: str, option: str, fix: str) -> Path:
    """``path`` as an existing file, or a FileNotFoundError naming the reward option and the fix."""
    if not isinstance(path, str) or not path.strip():
        raise FileNotFoundError(f"{reward}: option `{option}` is empty; {fix}")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"{reward}: `{option}` file '{path}' does not exist; {fix}")
    return resolved


def resolve_pretrained(source: str, reward: str, option: str, marker: str, fix: str) -> str:
    """A local folder holding ``marker`` (e.g. ``config.json``) or a hub id, checked before loading.

    A hub id is accepted when online, or offline (``HF_HUB_OFFLINE=1``) if it is in the hub cache.
    """
    if not isinstance(source, str) or not source.strip():
        raise FileNotFoundError(f"{reward}: option `{option}` is empty; {fix}")
    path = Path(source).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            raise FileNotFoundError(
                f"{reward}: `{option}` folder '{source}' has no {marker}; point it at a folder written by "
                f"save_pretrained (or give a hub id). {fix}"
            )
        return str(path)
    if not _looks_like_hub_id(source):
        raise FileNotFoundError(f"{reward}: `{option}` '{source}' is neither an existing folder nor a hub id; {fix}")
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, marker), str):
            raise FileNotFoundError(
                f"{reward}: `{option}` '{source}' is not a local folder, is not in the hub cache, and the hub is "
                f"offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE=1); {fix}"
            )
    return source


# --- state dicts -----------------------------------------------------------------------------------


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` or torch pickle file (``weights_only``, no code runs).

    A pickle holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` (training-checkpoint layouts) is
    unwrapped, also beside metadata that holds no tensor (``{"epoch": 3, "state_dict": {...}}``).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and len(data) == 1:
        (only_key, inner), = data.items()
        if only_key in ("state_dict", "model") and isinstance(inner, Mapping):
            data = inner
    elif isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        # a training checkpoint with metadata beside its weights (epoch, name: OpenCLIP's, HPSv2's)
        if not any(isinstance(v, torch.Tensor) for k, v in data.items() if k != "state_dict"):
            data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointMismatchError(f"'{path}' does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    what: str,
    display: Callable[[str], str] = lambda key: key,
    hint: str = "",
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``given`` has exactly ``expected``'s keys and shapes.

    ``display`` turns a key into the name the user's file uses (for messages in the file's own naming).
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape)
    )
    if not (missing or unexpected or wrong_shape):
        return

    def listing(keys: list[str], describe: Callable[[str], str]) -> str:
        shown = ", ".join(describe(k) for k in keys[:8])
        return shown + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {listing(missing, display)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected, display)}")
    if wrong_shape:
        problems.append(
            f"{len(wrong_shape)} shape mismatch(es): "
            + listing(wrong_shape, lambda k: f"{display(k)} {tuple(given[k].shape)} != {tuple(expected[k].shape)}")
        )
    raise CheckpointMismatchError(
        f"{what} does not match the model; nothing was loaded: {'; '.join(problems)}. {hint}".strip()
    )


__all__ = [
    "CheckpointMismatchError",
    "check_device_and_dtype",
    "check_state_dict",
    "load_weights_file",
    "resolve_file",
    "resolve_pretrained",
]

"""Training checkpoints: ``<root>/round_000012/`` holds everything needed to continue after round 12.

Layout of one checkpoint (tensors in safetensors, the rest in JSON; optimiser states with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so nothing arbitrary is unpickled):

    lora.safetensors               LoRA weights (peft names, as ``dpok.models.lora_state_dict``)
    policy_optimizer.pt            AdamW state of the LoRA weights
    value_function.safetensors     V_φ weights            (only with a value function)
    value_optimizer.pt             its AdamW state        (only with a value function)
    buffer.safetensors             transitions + prompt-embedding table (absent when empty)
    rng.safetensors                torch CPU (and CUDA) generator states
    state.json                     round, history, config, buffer metadata, reward normaliser,
                                   every trajectory's [round, prompt, reward], numpy and python RNG
                                   states; written last

A checkpoint is written into a hidden temporary folder inside ``root`` and then renamed into place with
``os.replace``, so a ``round_*`` folder is always complete; a crash leaves at most a ``.tmp_*`` folder,
which :func:`clean_partial_checkpoints` removes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 2  # 2: buffer transitions carry value_features; no pre-baseline shim
STATE_FILE = "state.json"
_NAME = re.compile(r"^round_(\d{6,})$")
_PARTIAL_PREFIXES = (".tmp_round_", ".old_round_")


@dataclass
class TrainingState:
    """Everything a checkpoint holds, as plain state dictionaries."""

    round: int
    lora: dict[str, torch.Tensor]
    policy_optimizer: dict[str, Any]
    buffer: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]
    rng: dict[str, Any]
    value_function: dict[str, torch.Tensor] | None = None
    value_optimizer: dict[str, Any] | None = None
    reward_normaliser: dict[str, Any] | None = None
    reward_log: list[list[Any]] | None = None
    probe_log: list[dict[str, Any]] | None = None


def checkpoint_name(round_number: int) -> str:
    return f"round_{round_number:06d}"


def checkpoint_round(path: str | Path) -> int:
    match = _NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"'{path}' is not a checkpoint folder (round_NNNNNN)")
    return int(match.group(1))


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest round first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_round)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest round under ``root``, or None."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def clean_partial_checkpoints(root: str | Path) -> None:
    """Remove temporary folders left by an interrupted :func:`save_checkpoint`."""
    root = Path(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and path.name.startswith(_PARTIAL_PREFIXES):
                shutil.rmtree(path, ignore_errors=True)


def remove_checkpoints(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints; returns the deleted paths."""
    old = list_checkpoints(root)[:-keep_last] if keep_last > 0 else list_checkpoints(root)
    remove_checkpoints(old)
    return old


def capture_rng_state() -> dict[str, Any]:
    """The global torch (CPU, CUDA if initialised), numpy and python RNG states."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *map(_plain, numpy_state[2:])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str | Path, state: TrainingState) -> Path:
    """Write ``state`` atomically as ``root/round_NNNNNN`` and return that path.

    An existing folder of the same name (from an earlier run being replaced) is swapped out only after
    the new one is complete.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.round)
    tmp = Path(tempfile.mkdtemp(prefix=_PARTIAL_PREFIXES[0], dir=root))
    try:
        save_file(state.lora, tmp / "lora.safetensors")
        torch.save(state.policy_optimizer, tmp / "policy_optimizer.pt")
        if state.value_function is not None:
            save_file(state.value_function, tmp / "value_function.safetensors")
            torch.save(state.value_optimizer, tmp / "value_optimizer.pt")
        if state.buffer["tensors"]:
            save_file(state.buffer["tensors"], tmp / "buffer.safetensors")
        rng_tensors = {"torch_cpu": state.rng["torch_cpu"]}
        for index, cuda_state in enumerate(state.rng.get("torch_cuda", [])):
            rng_tensors[f"torch_cuda_{index}"] = cuda_state
        save_file(rng_tensors, tmp / "rng.safetensors")
        document = {
            "format_version": FORMAT_VERSION,
            "round": state.round,
            "history": state.history,
            "config": state.config,
            "buffer_meta": state.buffer["meta"],
            "reward_normaliser": state.reward_normaliser,
            "reward_log": state.reward_log or [],
            "probe_log": state.probe_log or [],
            "rng": {"numpy": state.rng["numpy"], "python": state.rng["python"]},
        }
        (tmp / STATE_FILE).write_text(json.dumps(document, indent=1))
        _fsync_tree(tmp)
        aside = None
        if final.exists():
            aside = root / f"{_PARTIAL_PREFIXES[1]}{final.name}_{uuid.uuid4().hex[:8]}"
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


class DamagedCheckpointError(ValueError):
    """A checkpoint folder whose files cannot be read back (truncated or corrupted after it was written)."""


def load_checkpoint(path: str | Path) -> TrainingState:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Checkpoints are written atomically, so a damaged one was damaged afterwards (disk, copy, sync); any
    file that cannot be read is reported with the folder and what to do, never as a library traceback.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"'{path}' is not a complete checkpoint (no {STATE_FILE})")
    try:
        return _read_checkpoint(path)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        if isinstance(error, FileNotFoundError) or "has format" in str(error):
            raise
        raise DamagedCheckpointError(
            f"checkpoint '{path}' is damaged and cannot be resumed ({type(error).__name__}: {str(error)[:200]}). "
            f"Delete that folder to resume from the previous checkpoint next to it, or set "
            f"finetune.rl.runtime.resume=false to start afresh"
        ) from error


def _read_checkpoint(path: Path) -> TrainingState:
    document = json.loads((path / STATE_FILE).read_text())
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint '{path}' has format {document.get('format_version')}, expected {FORMAT_VERSION}")
    rng_tensors = load_file(path / "rng.safetensors")
    rng = {"torch_cpu": rng_tensors["torch_cpu"], **document["rng"]}
    cuda = sorted((k for k in rng_tensors if k.startswith("torch_cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if cuda:
        rng["torch_cuda"] = [rng_tensors[k] for k in cuda]
    has_value = (path / "value_function.safetensors").is_file()
    buffer_file = path / "buffer.safetensors"
    return TrainingState(
        round=int(document["round"]),
        lora=load_file(path / "lora.safetensors"),
        policy_optimizer=torch.load(path / "policy_optimizer.pt", weights_only=True, map_location="cpu"),
        buffer={"tensors": load_file(buffer_file) if buffer_file.is_file() else {}, "meta": document["buffer_meta"]},
        history=document["history"],
        config=document["config"],
        rng=rng,
        value_function=load_file(path / "value_function.safetensors") if has_value else None,
        value_optimizer=(
            torch.load(path / "value_optimizer.pt", weights_only=True, map_location="cpu") if has_value else None
        ),
        reward_normaliser=document["reward_normaliser"],
        reward_log=document["reward_log"],
        probe_log=document.get("probe_log", []),  # absent before the probe existed
    )

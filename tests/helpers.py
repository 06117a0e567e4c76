"""Helpers shared by the test modules (fixtures live in the conftest.py files): the project's layout,
the environment for subprocesses, a copy of the project to run Kedro in, and the config loader."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHIPPED_MODEL = ROOT / "data/06_models/shapes_base"

# A prompt that must come out escaped wherever a page or report shows prompts.
XSS_PROMPT = "<img src=x onerror=alert(1)>"

# Subprocesses (kedro, dvc, make) run offline, without telemetry, with this venv's tools first on PATH.
OFFLINE_ENV = {
    **os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
}

_NOT_COPIED = (".venv", ".git", "mlruns", "mlflow.db", "mlartifacts", "data", "__pycache__", ".pytest_cache",
               "build", ".dvc", "*.egg-info", ".ipynb_checkpoints")


def copy_project(tmp_path: Path, data: tuple[str, ...] = ("data/01_raw",)) -> Path:
    """The project without its venv, git, DVC cache and run outputs, plus the given data folders."""
    target = tmp_path / "project"
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    for part in data:
        shutil.copytree(ROOT / part, target / part, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "conf/local").mkdir(exist_ok=True)
    return target


def load_config(project_root: Path = ROOT, env: str = "local", runtime_params: dict | None = None) -> dict:
    """``{"parameters": ..., "catalog": ...}`` as `kedro run --env ENV` resolves them.

    Resolved at once: Kedro registers the ``globals`` resolver process-wide, so a loader read after
    another environment's loader was built would fill in that environment's globals.
    """
    from kedro.config import OmegaConfigLoader

    from dpok.config import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(
        conf_source=str(project_root / "conf"), env=env, runtime_params=runtime_params or {}, **CONFIG_LOADER_ARGS
    )
    return {"parameters": loader["parameters"], "catalog": loader["catalog"]}


def base_parameters(env: str = "local") -> dict:
    """A fresh copy of the parameters ``kedro run --env ENV`` sees: the one home of every default, from
    which the tests build their configs (with :func:`dpok.config.with_overrides`)."""
    return copy.deepcopy(_parameters(env))


@functools.cache
def _parameters(env: str) -> dict:
    return load_config(ROOT, env)["parameters"]


SAMPLER_KEYS = ("num_inference_steps", "guidance_scale", "eta")


def split_sampling(sampling: dict) -> tuple[dict, dict]:
    """``(pretrained_samples, sampler)`` parameters from one mapping of both blocks' keys (tiny settings in
    the pipeline tests); what it leaves out comes from conf/base."""
    from dpok.config import merged

    base = base_parameters()
    sampler = merged(base["sampler"], {k: v for k, v in sampling.items() if k in SAMPLER_KEYS})
    own = merged(base["pretrained_samples"], {k: v for k, v in sampling.items() if k not in SAMPLER_KEYS})
    return own, sampler


def finetune_config(overrides: dict | None = None, env: str = "local"):
    """conf/base's ``finetune.rl`` and ``sampler`` as a :class:`dpok.rl.FinetuneConfig`, with ``{"dotted.key":
    value}`` overrides under ``finetune.rl`` (``sampler.*`` keys set the sampler)."""
    from dpok.config import with_overrides
    from dpok.rl import FinetuneConfig

    params = base_parameters(env)
    overrides = dict(overrides or {})
    sampler = {k.removeprefix("sampler."): overrides.pop(k) for k in list(overrides) if k.startswith("sampler.")}
    return FinetuneConfig.from_params(
        with_overrides(params["finetune"]["rl"], overrides, "finetune.rl"),
        with_overrides(params["sampler"], sampler, "sampler"),
    )


def catalog_file(entry) -> str | None:
    """Where a catalog entry writes, or None for in-memory and MLflow-only entries."""
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("dataset"), dict) and entry.get("type", "").endswith("MlflowArtifactDataset"):
        return catalog_file(entry["dataset"])
    return next((str(entry[key]) for key in ("filepath", "path") if key in entry), None)


def local_entry(entry: dict, root: Path) -> dict:
    """A resolved catalog entry without its MLflow wrapper (metrics in memory), its path under ``root``."""
    entry = copy.deepcopy(entry)
    if entry["type"].endswith("MlflowArtifactDataset"):
        entry = entry["dataset"]
    if entry["type"].endswith("MlflowMetricsHistoryDataset"):
        return {"type": "MemoryDataset"}
    for key in ("filepath", "path"):
        if key in entry:
            entry[key] = str(root / entry[key])
    return entry


# --- the original reward models' image transform, restated (tests/models) ---------------------------


def pil_clip_transform(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's Resize(size, BICUBIC) + CenterCrop + ToTensor + Normalize on a PIL image, restated by
    hand from torchvision's code: the shorter side becomes ``size`` and the longer ``int(size * long /
    short)``; the crop starts at ``int(round((new - size) / 2))``."""
    from PIL import Image

    from dpok.models.aesthetic import CLIP_MEAN, CLIP_STD

    height, width = image.shape[:2]
    short, long = sorted((height, width))
    new_short, new_long = size, int(size * long / short)
    new_height, new_width = (new_short, new_long) if height <= width else (new_long, new_short)
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BICUBIC), dtype=np.float64)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    crop = resized[top : top + size, left : left + size] / 255.0
    return ((crop - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)


def sharp_image(height: int, width: int, seed: int) -> np.ndarray:
    """Flat-coloured rectangles on a light background: the hard edges where PIL's rounding shows most."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 235, dtype=np.uint8)
    for _ in range(6):
        top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
        image[top : top + rng.integers(2, height // 2 + 3), left : left + rng.integers(2, width // 2 + 3)] = (
            rng.integers(0, 256, 3)
        )
    return image


def accelerate_launch(processes: int) -> list[str]:
    """`accelerate launch` of ``processes`` CPU processes (torchrun, gloo) on a free port, up to the script."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def shapeseval_table():
    """The committed ShapesEval split (the finetune pipeline's `shapeseval_prompts`)."""
    import pandas as pd

    return pd.read_csv(ROOT / "data/01_raw/prompts/shapeseval.csv")

"""CLIP-family reward models on transformers' ``CLIPModel``, from local files, loaded strictly.

PickScore (a ``CLIPModel`` fine-tuned on Pick-a-Pic), HPSv2.1 (an OpenCLIP ViT-H/14 fine-tuned on HPD v2,
converted by :mod:`dpok.models.openclip`) and OpenAI's CLIP all score an image against its prompt through
the cosine of their projected embeddings; the rewards (:mod:`dpok.rewards.clip_rewards`) differ only in
how they scale it. What they share is here:

- **Files, checked before any weight loads** (:func:`check_processor_folder`, :func:`check_model_folder`):
  a processor folder holding the tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``) and
  ``preprocessor_config.json``; a model folder holding ``config.json`` and its weights
  (``model.safetensors``, ``pytorch_model.bin`` or a sharded ``model.safetensors.index.json``).
- **The tokenizer** (:func:`load_clip_tokenizer`): read with ``local_files_only``; its size must be the
  text model's ``vocab_size`` and its end-of-text token the one the model pools at. (With
  ``HF_HUB_OFFLINE=1`` a tokenizer can silently come back with a handful of tokens; it would score every
  prompt as unknown words.)
- **Strict weights** (:func:`clip_from_state_dict`): the model is built on the ``meta`` device from its
  config and takes the checkpoint's tensors only if every key and shape matches, else
  :class:`~dpok.models.checkpoints.CheckpointMismatchError` names the keys.
- **Preprocessing** (:class:`ClipImageTransform`): ``preprocessor_config.json``'s resize (shorter side,
  bicubic), centre crop and mean/std, computed with PIL exactly as the reference each reward was
  published with: torchvision's transform for OpenAI CLIP and OpenCLIP, transformers'
  ``CLIPImageProcessor`` for PickScore (they place an odd crop margin differently,
  :func:`dpok.models.aesthetic.pil_resize_crop`).
- **Scoring** (:class:`ClipScorer`): cosines of L2-normalised image and text embeddings, the towers in
  float16/bfloat16 on a GPU (``dtype: auto``), the cosine and ``logit_scale`` in float32.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpok.devices import resolve_device, resolve_dtype
from dpok.models.checkpoints import CheckpointMismatchError, check_state_dict, load_weights_file

TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
LEGACY_EOS_TOKEN_ID = 2  # transformers' CLIP pools at argmax(input_ids) when the config says eos_token_id 2


# --- files -----------------------------------------------------------------------------------------


def check_processor_folder(folder: str, reward: str, option: str, fix: str) -> Path:
    """A local folder with a CLIP tokenizer and ``preprocessor_config.json``, or FileNotFoundError naming
    the option, what is missing and ``fix``."""
    if not isinstance(folder, str) or not folder.strip():
        raise FileNotFoundError(f"{reward}: option `{option}` is empty; {fix}")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{reward}: `{option}` folder '{folder}' does not exist; {fix}")
    if not any(all((path / name).is_file() for name in group) for group in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{reward}: `{option}` folder '{folder}' has no tokenizer (tokenizer.json, or vocab.json and merges.txt); "
            f"{fix}"
        )
    if not (path / PREPROCESSOR_CONFIG).is_file():
        raise FileNotFoundError(f"{reward}: `{option}` folder '{folder}' has no {PREPROCESSOR_CONFIG}; {fix}")
    return path


def check_model_folder(folder: str, reward: str, option: str, fix: str) -> Path:
    """A local ``CLIPModel`` folder (``config.json`` and a weights file), or FileNotFoundError."""
    if not isinstance(folder, str) or not folder.strip():
        raise FileNotFoundError(f"{reward}: option `{option}` is empty; {fix}")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{reward}: `{option}` folder '{folder}' does not exist; {fix}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{reward}: `{option}` folder '{folder}' has no config.json; {fix}")
    if weights_file(path) is None:
        raise FileNotFoundError(
            f"{reward}: `{option}` folder '{folder}' has no weights ({', '.join(WEIGHT_FILES)}); {fix}"
        )
    return path


def weights_file(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def read_clip_config(folder: Path, reward: str):
    """``folder/config.json`` as a ``CLIPConfig`` (a CLIP *model* config), or ValueError naming the file."""
    from transformers import CLIPConfig

    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{reward}: '{path}' cannot be read as JSON: {error}") from None
    if raw.get("model_type") != "clip" or "text_config" not in raw or "vision_config" not in raw:
        raise ValueError(
            f"{reward}: '{path}' is not a CLIPModel config (model_type {raw.get('model_type')!r}, needs text_config "
            "and vision_config); use the config.json of the model named in docs/sd15.md"
        )
    return CLIPConfig.from_dict(raw)


def load_state_files(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``save_pretrained`` folder's weights (one file, or the shards its index names)."""
    path = weights_file(folder)
    if path is None:
        raise FileNotFoundError(f"no weights ({', '.join(WEIGHT_FILES)}) in '{folder}'")
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_weights_file(folder / shard))
        return state
    return load_weights_file(path)


# --- tokenizer -------------------------------------------------------------------------------------


def load_clip_tokenizer(folder: Path, text_config, reward: str, fix: str):
    """The folder's ``CLIPTokenizer`` (local files only), checked against the text model: as many tokens
    as embeddings, and the end-of-text token where the model pools (``eos_token_id``, or the largest id
    for configs that pool at ``argmax(input_ids)``)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tokenizer) != text_config.vocab_size:
        raise ValueError(
            f"{reward}: the tokenizer in '{folder}' has {len(tokenizer)} tokens but the text model has "
            f"{text_config.vocab_size} embeddings (an incomplete or wrong tokenizer folder?); {fix}"
        )
    eos = tokenizer.eos_token_id
    pooled_at = text_config.vocab_size - 1 if text_config.eos_token_id == LEGACY_EOS_TOKEN_ID else text_config.eos_token_id
    if eos != pooled_at:
        raise ValueError(
            f"{reward}: the tokenizer in '{folder}' ends prompts with token {eos} but the text model reads its "
            f"features at token {pooled_at}; use the tokenizer published with the model; {fix}"
        )
    return tokenizer


# --- preprocessing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipImageTransform:
    """Resize the shorter side to ``size`` (PIL bicubic), centre-crop ``size``², scale to [0, 1], normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_rounding: str = "torchvision"

    @classmethod
    def from_preprocessor_config(cls, path: Path, crop_rounding: str, reward: str) -> ClipImageTransform:
        """From ``preprocessor_config.json``, refusing settings this transform does not compute."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{reward}: '{path}' cannot be read as JSON: {error}") from None
        size, crop = raw.get("size"), raw.get("crop_size")
        short = size.get("shortest_edge") if isinstance(size, Mapping) else size
        crop_hw = (crop.get("height"), crop.get("width")) if isinstance(crop, Mapping) else (crop, crop)
        problems = []
        if not isinstance(short, int) or crop_hw != (short, short):
            problems.append(f"size {size!r} / crop_size {crop!r} (expected shortest_edge S and an S×S crop)")
        if raw.get("resample", 3) != 3:
            problems.append(f"resample {raw.get('resample')!r} (expected 3, bicubic)")
        for flag in ("do_resize", "do_center_crop", "do_normalize", "do_rescale"):
            if raw.get(flag, True) is not True:
                problems.append(f"{flag} false")
        if abs(float(raw.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
            problems.append(f"rescale_factor {raw.get('rescale_factor')!r} (expected 1/255)")
        mean, std = raw.get("image_mean"), raw.get("image_std")
        if not (isinstance(mean, list) and len(mean) == 3 and isinstance(std, list) and len(std) == 3):
            problems.append(f"image_mean {mean!r} / image_std {std!r} (expected three numbers each)")
        if problems:
            raise ValueError(
                f"{reward}: '{path}' asks for preprocessing this reward does not implement: {'; '.join(problems)}; "
                "use the preprocessor_config.json published with the model (docs/sd15.md)"
            )
        return cls(int(short), tuple(float(m) for m in mean), tuple(float(s) for s in std), crop_rounding)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Float32 ``(N, 3, size, size)`` model inputs from uint8 ``(N, H, W, 3)`` images."""
        from dpok.models.aesthetic import pil_resize_crop

        pixels = pil_resize_crop(images, self.size, self.crop_rounding)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std


# --- the model -------------------------------------------------------------------------------------


def clip_from_state_dict(
    config, state: Mapping[str, torch.Tensor], source: str, hint: str, converted: bool = False
):
    """A ``CLIPModel`` of ``config`` holding exactly ``state``'s tensors (strict keys and shapes).

    ``converted``: ``state`` was already checked and mapped (:func:`dpok.models.openclip.convert_openclip_state_dict`).
    Old ``save_pretrained`` files also hold the constant ``position_ids`` buffers: accepted if they are
    ``arange``, then recomputed.
    """
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    state = dict(state)
    for key in [k for k in state if k.endswith("embeddings.position_ids")]:
        tensor = state.pop(key)
        if not torch.equal(tensor.reshape(-1).long(), torch.arange(tensor.numel())):
            raise CheckpointMismatchError(f"{source}: {key} should be arange({tensor.numel()}); nothing was loaded")
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    if not converted:
        check_state_dict(expected, state, source, hint=hint)
    model.load_state_dict(state, strict=False, assign=True)
    for name, module in model.named_modules():  # the non-persistent constant buffers, rebuilt on the CPU
        buffer = getattr(module, "position_ids", None)
        if isinstance(buffer, torch.Tensor) and buffer.is_meta:
            module.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand((1, -1)), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{source}: tensors without values after loading: {left[:5]}")
    return model.eval().requires_grad_(False)


class ClipScorer:
    """Cosine similarity of each image with its prompt under a ``CLIPModel``, batched, without gradients.

    The towers run in ``dtype`` (``auto``: float16 on CUDA, float32 on CPU); embeddings are normalised and
    compared in float32. ``logit_scale`` is ``exp`` of the checkpoint's learned temperature, read in
    float32 before any cast.
    """

    def __init__(
        self, model, tokenizer, transform: ClipImageTransform, device: str = "auto", dtype: str = "auto",
        batch_size: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.tokenizer = tokenizer
        self.transform = transform
        self.batch_size = batch_size
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # truncation keeps the end-of-text token last, as OpenCLIP's and OpenAI's tokenizers do
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixel_values.to(self.device, self.dtype)).pooler_output
        features = self.model.visual_projection(pooled).float()
        return features / features.norm(dim=-1, keepdim=True)

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
        ).pooler_output
        features = self.model.text_projection(pooled).float()
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def cosine_of_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Float32 CPU ``(N,)`` cosines of preprocessed images and tokenized prompts, ``batch_size`` at a time."""
        parts = []
        for start in range(0, pixel_values.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            image = self.image_embeddings(pixel_values[part])
            text = self.text_embeddings(input_ids[part], attention_mask[part])
            parts.append((image * text).sum(-1).cpu())
        return torch.cat(parts) if parts else torch.zeros(0)

    def cosine(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """Float64 ``(N,)`` cosines of uint8 ``(N, H, W, 3)`` images with their prompts."""
        if len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass exactly one prompt per image")
        return self.cosine_of_inputs(self.transform(images), *self.tokenize(prompts)).double().numpy()


@dataclass(frozen=True)
class ClipRewardFiles:
    """What a CLIP reward reads, checked when the reward is built: the model config, the tokenizer
    (loaded and size-checked, it is small), the preprocessing; the weights load later."""

    config: Any
    tokenizer: Any
    transform: ClipImageTransform


def check_clip_reward_files(
    config_folder: Path, processor_folder: Path, crop_rounding: str, reward: str, fix: str
) -> ClipRewardFiles:
    config = read_clip_config(config_folder, reward)
    tokenizer = load_clip_tokenizer(processor_folder, config.text_config, reward, fix)
    transform = ClipImageTransform.from_preprocessor_config(processor_folder / PREPROCESSOR_CONFIG, crop_rounding, reward)
    if transform.size != config.vision_config.image_size:
        raise ValueError(
            f"{reward}: {PREPROCESSOR_CONFIG} in '{processor_folder}' crops {transform.size} px but the vision model "
            f"takes {config.vision_config.image_size} px; use the processor published with the model; {fix}"
        )
    return ClipRewardFiles(config, tokenizer, transform)


def _tiny_clip(config, seed: int):
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
        with torch.no_grad():  # CLIP's initialisation makes every image alike; spread them
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    module.weight.normal_(0.0, 1.0 / module.weight[0].numel() ** 0.5)
            model.vision_model.embeddings.class_embedding.normal_()
    return model


def write_tiny_clip_rewards(folder: str | Path, seed: int = 0) -> dict[str, dict[str, str]]:
    """Tiny random-weight files in the published layouts, for tests and smoke runs: a ``CLIPModel`` folder
    at 32 px with its word-level ``CLIPTokenizer`` and ``preprocessor_config.json`` (``clip/``), and an
    OpenCLIP-layout checkpoint of the same architecture (``hps.pt``). Returns the options of ``pickscore``,
    ``hpsv2`` and ``clip_score``."""
    from transformers import CLIPConfig

    from dpok.models.aesthetic import CLIP_MEAN, CLIP_STD
    from dpok.models.openclip import clip_to_openclip_state_dict
    from dpok.models.tokenizer import BOS, EOS, build_word_tokenizer

    folder = Path(folder)
    clip_folder = folder / "clip"
    words = "a an the and of on in at left right red green blue yellow circle square triangle cat dog rabbit moon".split()
    tokenizer = build_word_tokenizer(words, model_max_length=16)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=len(tokenizer), max_position_embeddings=16, hidden_act="gelu",
                         bos_token_id=tokenizer.convert_tokens_to_ids(BOS), eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=24,
    )
    _tiny_clip(config, seed).save_pretrained(clip_folder)
    tokenizer.save_pretrained(clip_folder)
    (clip_folder / PREPROCESSOR_CONFIG).write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }, indent=2))
    torch.save(clip_to_openclip_state_dict(_tiny_clip(config, seed + 1).state_dict()), folder / "hps.pt")
    return {
        "pickscore": {"model": str(clip_folder), "processor": str(clip_folder)},
        "hpsv2": {"checkpoint": str(folder / "hps.pt"), "processor": str(clip_folder)},
        "clip_score": {"model": str(clip_folder)},
    }


__all__ = [
    "ClipImageTransform",
    "ClipRewardFiles",
    "ClipScorer",
    "check_clip_reward_files",
    "check_model_folder",
    "check_processor_folder",
    "clip_from_state_dict",
    "load_clip_tokenizer",
    "load_state_files",
    "read_clip_config",
    "write_tiny_clip_rewards",
]

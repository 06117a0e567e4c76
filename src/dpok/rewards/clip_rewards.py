"""CLIP-based preference rewards: ``pickscore``, ``hpsv2`` (HPSv2.1) and ``clip_score``.

All three embed the image and the prompt with a CLIP model (:mod:`dpok.models.clip_scores`) and score the
cosine ``c = <f_img, f_txt> / (|f_img| |f_txt|)`` of the two projected embeddings; they differ in the
weights and in the scale:

================  ==========================================================  ===============================
reward            score                                                       source
================  ==========================================================  ===============================
``pickscore``     ``exp(logit_scale) · c`` (``exp(logit_scale)`` ≈ 100)        Kirstain et al., *Pick-a-Pic*
                                                                              (NeurIPS 2023), §4: the scaled
                                                                              cosine of PickScore's CLIP-H
``hpsv2``         ``c`` (no temperature)                                      Wu et al., *Human Preference
                                                                              Score v2* (2023); the official
                                                                              ``score.py``: the diagonal of
                                                                              ``image_features @ text_features.T``
``clip_score``    ``w · max(c, 0)``, ``w = 100`` by default                    Hessel et al., *CLIPScore*
                                                                              (EMNLP 2021), with
                                                                              torchmetrics' ``w = 100``
                                                                              (the paper's ``w = 2.5``: set
                                                                              ``weight: 2.5``)
================  ==========================================================  ===============================

Scales (docs/rewards.md): PickScore lies in [−100, 100] and HPSv2.1 in [−1, 1], in practice within a few
units (PickScore) or hundredths (HPSv2.1) of each other for images of one prompt; CLIP score in [0, 100].
Weight a mixture so that each term's spread across a batch is comparable.

Every file is local (docs/sd15.md lists what to fetch once online); paths, configs, the tokenizer (size
and end-of-text token) and the preprocessing are checked when the reward is built, before any weights
load; the weights load strictly on the first call. Preprocessing is each reference's own: transformers'
``CLIPImageProcessor`` for PickScore, torchvision's transform (OpenCLIP, OpenAI CLIP) for the others.

Example (``parameters_finetune.yml``)::

    reward: {imagereward: 1.0, pickscore: 0.5, hpsv2: 0.0, clip_score: 0.0}
    reward_kwargs:
      pickscore:
        model: data/06_models/reward_models/PickScore_v1
        processor: data/06_models/reward_models/CLIP-ViT-H-14-laion2B-s32B-b79K
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dpok.rewards.registry import RewardFn, check_batch_size, lazily_loaded_reward, register_reward

FETCH = "fetch the files once online as docs/sd15.md describes (section 'Other rewards')"


def _clip_reward(
    reward: str, weights: Path, processor: Path, config_folder: Path, crop_rounding: str,
    device: str, dtype: str, batch_size: int, openclip: bool, transform_cosine,
) -> RewardFn:
    from dpok.models.checkpoints import check_device_and_dtype
    from dpok.models.clip_scores import check_clip_reward_files

    check_device_and_dtype(reward, device, dtype)
    check_batch_size(reward, batch_size)
    files = check_clip_reward_files(config_folder, processor, crop_rounding, reward, FETCH)

    def load():
        from dpok.models.clip_scores import ClipScorer, clip_from_state_dict, load_state_files

        what = f"{reward} weights '{weights}'"
        if openclip:
            import torch
            from transformers import CLIPModel

            from dpok.models.checkpoints import load_weights_file
            from dpok.models.openclip import convert_openclip_state_dict

            hint = (f"expected an OpenCLIP checkpoint of the architecture in '{config_folder}/config.json' "
                    "(HPSv2.1: HPS_v2.1_compressed.pt with laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config)")
            with torch.device("meta"):
                expected = CLIPModel(files.config).state_dict()
            state = convert_openclip_state_dict(load_weights_file(weights), expected, what, hint)
            model = clip_from_state_dict(files.config, state, what, hint, converted=True)
        else:
            hint = f"expected the CLIPModel weights matching '{config_folder}/config.json'"
            model = clip_from_state_dict(files.config, load_state_files(weights), what, hint)
        return ClipScorer(model, files.tokenizer, files.transform, device, dtype, batch_size)

    def score(scorer, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return transform_cosine(scorer, scorer.cosine(images, prompts))

    return lazily_loaded_reward(load, score)


@register_reward("pickscore")
def pickscore(model: str, processor: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16) -> RewardFn:
    """PickScore v1: ``exp(logit_scale) · cos`` (module docstring).

    Args:
        model: The ``yuvalkirstain/PickScore_v1`` folder (``config.json`` and weights).
        processor: The ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` folder's tokenizer and
            ``preprocessor_config.json`` (PickScore was published with that processor).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda[:N]``.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``.
        batch_size: Images per forward pass.
    """
    from dpok.models.clip_scores import check_model_folder, check_processor_folder

    weights = check_model_folder(model, "pickscore", "model", FETCH)
    processor_folder = check_processor_folder(processor, "pickscore", "processor", FETCH)
    return _clip_reward("pickscore", weights, processor_folder, weights, "transformers", device, dtype, batch_size,
                        openclip=False, transform_cosine=lambda scorer, cos: scorer.logit_scale * cos)


@register_reward("hpsv2")
def hpsv2(checkpoint: str, processor: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16) -> RewardFn:
    """HPSv2.1: the cosine of the fine-tuned OpenCLIP ViT-H/14 (module docstring).

    Args:
        checkpoint: ``HPS_v2.1_compressed.pt`` (OpenCLIP key layout; converted by :mod:`dpok.models.openclip`).
        processor: The ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` folder without its weights: ``config.json``
            (the architecture), the tokenizer and ``preprocessor_config.json``.
        device, dtype, batch_size: As for ``pickscore``.
    """
    from dpok.models.checkpoints import resolve_file
    from dpok.models.clip_scores import check_processor_folder

    weights = resolve_file(checkpoint, "hpsv2", "checkpoint", FETCH)
    processor_folder = check_processor_folder(processor, "hpsv2", "processor", FETCH)
    if not (processor_folder / "config.json").is_file():
        raise FileNotFoundError(
            f"hpsv2: `processor` folder '{processor}' has no config.json (the ViT-H/14 architecture); {FETCH}"
        )
    return _clip_reward("hpsv2", weights, processor_folder, processor_folder, "torchvision", device, dtype, batch_size,
                        openclip=True, transform_cosine=lambda scorer, cos: cos)


@register_reward("clip_score")
def clip_score(
    model: str, processor: str | None = None, weight: float = 100.0, device: str = "auto", dtype: str = "auto",
    batch_size: int = 16,
) -> RewardFn:
    """CLIP score ``weight · max(cos, 0)`` (Hessel et al.; module docstring).

    Args:
        model: A ``CLIPModel`` folder, e.g. ``openai/clip-vit-large-patch14`` (``config.json`` and weights).
        processor: The folder with its tokenizer and ``preprocessor_config.json`` (default: ``model``).
        weight: ``w``: 100 as torchmetrics, 2.5 as the paper.
        device, dtype, batch_size: As for ``pickscore``.
    """
    from dpok.models.clip_scores import check_model_folder, check_processor_folder

    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"clip_score: weight must be a positive number (100 or Hessel et al.'s 2.5), got {weight!r}")
    weights = check_model_folder(model, "clip_score", "model", FETCH)
    processor_folder = check_processor_folder(model if processor is None else processor, "clip_score",
                                              "model" if processor is None else "processor", FETCH)
    return _clip_reward("clip_score", weights, processor_folder, weights, "torchvision", device, dtype, batch_size,
                        openclip=False, transform_cosine=lambda scorer, cos: float(weight) * np.maximum(cos, 0.0))

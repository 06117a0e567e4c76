"""The LAION aesthetic predictor on CLIP ViT-L/14, and the CLIP-side pieces ImageReward shares with it.

**Aesthetic score** (christophschuhmann/improved-aesthetic-predictor, weights
``sac+logos+ava1-l14-linearMSE.pth``): the CLIP ViT-L/14 image embedding (the *projected* 768-d
embedding, OpenAI CLIP's ``encode_image``, transformers' ``get_image_features``), L2-normalised, through
an MLP 768→1024→128→64→16→1. The MLP has dropout between its layers and *no activation* (the ReLUs are
commented out in the original), so in eval mode it is one affine map, fitted with MSE to AVA ratings
(about 1-10). :class:`ScoreMLP` is that MLP; ImageReward reuses the same class as its head (on its
768-d text feature), so both load with the same keys: ``layers.0``, ``layers.2``, ``layers.4``,
``layers.6``, ``layers.7`` (the odd indices are the dropouts).

**Preprocessing** (CLIP's transform, which ImageReward uses too): resize the shorter side to 224 with
bicubic filtering, centre-crop 224×224, scale to [0, 1], normalise by CLIP's mean/std. The rewards get
8-bit images and need no gradient, so they resize exactly as the originals do, with PIL on each image
(:func:`pil_resize_crop`, torchvision's size and crop arithmetic). :func:`clip_preprocess` is the same
transform on float tensors, batched on the scoring device and differentiable, for a caller that needs a
gradient through the reward: torch's bicubic (``antialias=True``) is PIL's filter, but PIL rounds to
8 bits between its horizontal and vertical passes, so on sharp edges single pixels differ by up to
26/255 when enlarging 40×56 images (mean 0.06/255; 10/255 and 0.015/255 when shrinking 512²), which
moved ImageReward scores by up to 1.9e-3; ``tests/models/test_aesthetic.py`` measures both paths.

Checking and loading the weight files (and the errors that name mismatched keys) is
:mod:`dpok.models.checkpoints`; ImageReward uses it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpok.devices import resolve_device, resolve_dtype
from dpok.images import uint8_images_to_pixels
from dpok.models.checkpoints import CheckpointMismatchError, check_state_dict, load_weights_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SCORE_MLP_WIDTHS = (1024, 128, 64, 16)
SCORE_MLP_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


# --- preprocessing ---------------------------------------------------------------------------------


CROP_ROUNDING = ("torchvision", "transformers")


def pil_resize_crop(images: np.ndarray, size: int, crop_rounding: str = "torchvision") -> torch.Tensor:
    """The originals' transform up to the normalisation, on ``(N, H, W, 3)`` uint8 images: PIL bicubic
    resize of the shorter side to ``size`` (torchvision ``Resize(size, BICUBIC)`` on a PIL image), centre
    crop ``size``×``size`` (``CenterCrop``), then ``ToTensor``. Returns float32 ``(N, 3, size, size)`` in
    [0, 1], to be normalised by :func:`clip_preprocess` (which then neither resizes nor crops).

    ``crop_rounding``: where an odd margin puts the crop. ``torchvision`` (OpenAI CLIP, OpenCLIP, BLIP):
    ``round(margin / 2)``, Python's round-half-to-even; ``transformers`` (``CLIPImageProcessor``, PickScore's
    reference): ``margin // 2``. They differ by one pixel when the margin is 3 mod 4 (e.g. 200×203 → 224×227).
    """
    from PIL import Image

    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if crop_rounding not in CROP_ROUNDING:
        raise ValueError(f"crop_rounding must be one of {CROP_ROUNDING}, got {crop_rounding!r}")
    height, width = resized_shape(images.shape[1], images.shape[2], size)
    if crop_rounding == "torchvision":
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        top, left = (height - size) // 2, (width - size) // 2
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        picture = Image.fromarray(image)
        if (height, width) != image.shape[:2]:
            picture = picture.resize((width, height), Image.Resampling.BICUBIC)
        out[index] = np.asarray(picture.crop((left, top, left + size, top + size)))
    return uint8_images_to_pixels(out)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer ``int(size * long / short)``."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def clip_preprocess(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's transform on a batch: bicubic resize of the shorter side to ``size``, centre crop, normalise.

    ``pixels``: float ``(N, 3, H, W)`` in [0, 1] on any device. Returns float32 ``(N, 3, size, size)``.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must have shape (N, 3, H, W), got {tuple(pixels.shape)}")
    x = pixels.float()
    height, width = resized_shape(x.shape[2], x.shape[3], size)
    if (height, width) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)  # PIL's output is clipped to 0..255
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))  # torchvision CenterCrop
    x = x[:, :, top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# --- the MLP ---------------------------------------------------------------------------------------


class ScoreMLP(nn.Module):
    """The improved-aesthetic-predictor MLP: ``input_size``→1024→128→64→16→1, linear, dropout between.

    Always runs in float32 (the originals cast their features with ``.float()``). Returns shape (N,).
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        w1, w2, w3, w4 = SCORE_MLP_WIDTHS
        self.input_size = int(input_size)
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, w1),
            nn.Dropout(0.2),
            nn.Linear(w1, w2),
            nn.Dropout(0.2),
            nn.Linear(w2, w3),
            nn.Dropout(0.1),
            nn.Linear(w3, w4),
            nn.Linear(w4, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features.float()).squeeze(-1)


# --- the aesthetic model ---------------------------------------------------------------------------


class AestheticModel(nn.Module):
    """CLIP's image tower and projection, then :class:`ScoreMLP` on the L2-normalised embedding.

    Only the vision half of a ``CLIPModel`` is kept (the text tower is dropped after loading).
    """

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Linear, image_size: int) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.image_size = int(image_size)
        self.mlp = ScoreMLP(visual_projection.out_features)

    @classmethod
    def from_clip(cls, clip: nn.Module) -> AestheticModel:
        """From a transformers ``CLIPModel`` (its vision tower and projection, shared, not copied)."""
        return cls(clip.vision_model, clip.visual_projection, clip.config.vision_config.image_size)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected CLIP embeddings (float32, ``(N, D)``) of ``pixels`` in [0, 1]."""
        weight = self.visual_projection.weight
        inputs = clip_preprocess(pixels.to(weight.device), self.image_size).to(weight.dtype)
        pooled = self.vision_model(pixel_values=inputs).pooler_output
        embeddings = self.visual_projection(pooled).float()
        return embeddings / embeddings.norm(dim=-1, keepdim=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Aesthetic scores, shape (N,), float32."""
        return self.mlp(self.image_embeddings(pixels))

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Scores of a batch of ``pixels`` (float (N, 3, H, W) in [0, 1]), ``batch_size`` at a time, on CPU."""
        if self.training:
            raise RuntimeError("call .eval() before scoring: dropout would make the scores random")
        parts = [self(pixels[i : i + batch_size]).cpu() for i in range(0, pixels.shape[0], batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0)


def load_score_mlp(mlp: ScoreMLP, weights: str | Path) -> ScoreMLP:
    """Load ``weights`` into ``mlp`` strictly (every key, every shape), or raise naming the differences."""
    state = load_weights_file(weights)
    check_state_dict(
        mlp.state_dict(), state, f"aesthetic MLP weights '{weights}'",
        hint=f"expected the improved-aesthetic-predictor layout ({', '.join(SCORE_MLP_KEYS[::2])} with biases) "
        f"for a {mlp.input_size}-d CLIP embedding (ViT-L/14: 768, file sac+logos+ava1-l14-linearMSE.pth)",
    )
    mlp.load_state_dict(state, strict=True)
    return mlp


def load_aesthetic_model(
    clip_model: str, mlp_weights: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> AestheticModel:
    """The aesthetic model from a ``CLIPModel`` folder or hub id and the MLP weights file, in eval mode.

    The CLIP tower runs in ``dtype`` (``"auto"``: float16 on CUDA, else float32); the MLP in float32.
    Refuses a CLIP checkpoint whose vision weights did not all load.
    """
    from transformers import CLIPModel

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    clip, info = CLIPModel.from_pretrained(clip_model, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if k.startswith(("vision_model.", "visual_projection."))]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        raise CheckpointMismatchError(
            f"aesthetic: CLIP model '{clip_model}' did not load its image tower: missing {missing[:8]}, "
            f"mismatched {mismatched[:8]}; use a CLIPModel checkpoint such as openai/clip-vit-large-patch14"
        )
    model = AestheticModel.from_clip(clip)
    del clip  # the text tower is not needed
    load_score_mlp(model.mlp, mlp_weights)
    model.vision_model.to(device=device, dtype=dtype)
    model.visual_projection.to(device=device, dtype=dtype)
    model.mlp.to(device=device, dtype=torch.float32)
    return model.eval().requires_grad_(False)


def write_tiny_aesthetic(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Write a tiny random-weight CLIP (``save_pretrained`` folder) and an MLP weights file in the LAION
    layout, for tests and smoke runs; returns the ``aesthetic`` reward options."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(config).eval()
        mlp = ScoreMLP(config.projection_dim)
        with torch.no_grad():  # spread the output so that scores differ visibly between images
            for layer in mlp.layers:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, 1.0 / layer.in_features**0.5)
    clip.save_pretrained(folder / "clip")
    torch.save(mlp.state_dict(), folder / "aesthetic_mlp.pth")
    return {"clip_model": str(folder / "clip"), "mlp_weights": str(folder / "aesthetic_mlp.pth")}


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AestheticModel",
    "ScoreMLP",
    "clip_preprocess",
    "load_aesthetic_model",
    "load_score_mlp",
    "pil_resize_crop",
    "write_tiny_aesthetic",
]

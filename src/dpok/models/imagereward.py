"""ImageReward (Xu et al., NeurIPS 2023; THUDM/ImageReward v1.0) on torch, loading ``ImageReward.pt`` strictly.

The model, as the official ``ImageReward.score`` computes it:

1. image → CLIP preprocessing at 224 (:func:`dpok.models.aesthetic.clip_preprocess`) → BLIP's ViT-L/16
   (24 blocks, width 1024, 16 heads, pre-norm, LayerNorm eps 1e-6, final LayerNorm) → 197 image tokens.
   transformers' ``BlipVisionModel`` is this network with other parameter names (:data:`KEY_RULES`).
2. prompt → BERT tokenizer (``bert-base-uncased`` plus BLIP's ``[DEC]``/``[ENC]`` tokens, 30 524 ids),
   padded/truncated to 35 tokens → BLIP's BERT (``med_config.json``: 12 layers, width 768) where every
   layer is self-attention → cross-attention to the image tokens → feed-forward. The cross-attention's
   keys and values take the 1024-wide image features (``encoder_width``), which transformers'
   ``BertModel`` cannot, so :class:`MedTextEncoder` implements it, under BLIP's parameter names.
3. the feature of the first ([CLS]) token → :class:`~dpok.models.aesthetic.ScoreMLP` (768→…→1, float32)
   → ``(r − 0.16717…) / 1.03334…`` (:data:`IMAGEREWARD_MEAN`, :data:`IMAGEREWARD_STD`), applied once, in
   :meth:`ImageRewardModel.forward`.

BLIP's ``vision_proj``/``text_proj`` (BLIP_Pretrain's 256-d contrastive heads) are in the checkpoint but
unused by the score; the model keeps them so that the file loads with ``strict=True``.

Key mapping (official key → ours); every official key matches exactly one rule and every parameter of
ours is produced by exactly one key, so missing or extra keys are refused, with their official names:

=====================================================  =================================================
``blip.visual_encoder.cls_token``                      ``vision.embeddings.class_embedding``
``blip.visual_encoder.pos_embed``                      ``vision.embeddings.position_embedding``
``blip.visual_encoder.patch_embed.proj.*``             ``vision.embeddings.patch_embedding.*``
``blip.visual_encoder.blocks.N.norm1.*``               ``vision.encoder.layers.N.layer_norm1.*``
``blip.visual_encoder.blocks.N.attn.qkv.*``            ``vision.encoder.layers.N.self_attn.qkv.*``
``blip.visual_encoder.blocks.N.attn.proj.*``           ``vision.encoder.layers.N.self_attn.projection.*``
``blip.visual_encoder.blocks.N.norm2.*``               ``vision.encoder.layers.N.layer_norm2.*``
``blip.visual_encoder.blocks.N.mlp.fc1|fc2.*``         ``vision.encoder.layers.N.mlp.fc1|fc2.*``
``blip.visual_encoder.norm.*``                         ``vision.post_layernorm.*``
``blip.text_encoder.*``                                ``text.*`` (same names below: BLIP's BERT)
``blip.vision_proj.*`` / ``blip.text_proj.*``          ``vision_proj.*`` / ``text_proj.*``
``mlp.layers.{0,2,4,6,7}.*``                           ``head.layers.{0,2,4,6,7}.*``
=====================================================  =================================================

One key is optional: ``blip.text_encoder.embeddings.position_ids``, a constant ``arange`` buffer that
BLIP's BERT saved with the weights (transformers later stopped saving it). If present it must equal
``arange(max_position_embeddings)``; it is then dropped (positions are computed, not stored).

Differences from the official code: the scorer normalises tensors, batched; the ``imagereward`` reward
resizes 8-bit images with PIL exactly as the original (:func:`dpok.models.aesthetic.pil_resize_crop`),
while the tensor resize of :func:`~dpok.models.aesthetic.clip_preprocess` (differentiable) differs
slightly; scoring is batched (the official loop scores one image at a time); attention uses
``scaled_dot_product_attention`` (the same function, fused).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpok.config import from_mapping
from dpok.devices import resolve_device, resolve_dtype
from dpok.models.aesthetic import ScoreMLP, clip_preprocess
from dpok.models.checkpoints import CheckpointMismatchError, check_state_dict, load_weights_file

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35  # the official tokenizer call: padding="max_length", truncation=True, max_length=35
BLIP_EMBED_DIM = 256  # BLIP_Pretrain's vision_proj/text_proj width
OPTIONAL_POSITION_IDS = "blip.text_encoder.embeddings.position_ids"

# (official pattern, our pattern); "{n}" is a layer index; a pattern ending in "." is a prefix whose
# remainder is carried over, any other pattern is a whole key.
KEY_RULES: tuple[tuple[str, str], ...] = (
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.{n}.norm1.", "vision.encoder.layers.{n}.layer_norm1."),
    ("blip.visual_encoder.blocks.{n}.attn.qkv.", "vision.encoder.layers.{n}.self_attn.qkv."),
    ("blip.visual_encoder.blocks.{n}.attn.proj.", "vision.encoder.layers.{n}.self_attn.projection."),
    ("blip.visual_encoder.blocks.{n}.norm2.", "vision.encoder.layers.{n}.layer_norm2."),
    ("blip.visual_encoder.blocks.{n}.mlp.fc1.", "vision.encoder.layers.{n}.mlp.fc1."),
    ("blip.visual_encoder.blocks.{n}.mlp.fc2.", "vision.encoder.layers.{n}.mlp.fc2."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    ("blip.text_encoder.", "text."),
    ("blip.vision_proj.", "vision_proj."),
    ("blip.text_proj.", "text_proj."),
    ("mlp.", "head."),
)


def _compile(pattern: str) -> tuple[re.Pattern[str], str]:
    regex = re.escape(pattern).replace(r"\{n\}", r"(?P<n>\d+)")
    return re.compile(regex + ("(?P<rest>.+)" if pattern.endswith(".") else "") + "$"), pattern


_TO_OURS = [(_compile(official)[0], ours) for official, ours in KEY_RULES]
_TO_OFFICIAL = [(_compile(ours)[0], official) for official, ours in KEY_RULES]


def _apply(rules: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
    for regex, template in rules:
        match = regex.match(key)
        if match:
            groups = match.groupdict()
            return template.replace("{n}", groups.get("n") or "") + (groups.get("rest") or "")
    return None


def official_to_ours(key: str) -> str | None:
    """Our parameter name for an official ``ImageReward.pt`` key, or None if no rule covers it."""
    return _apply(_TO_OURS, key)


def ours_to_official(key: str) -> str:
    """The official key of one of our parameter names (for messages in the checkpoint's own naming)."""
    return _apply(_TO_OFFICIAL, key) or key


# --- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlipVisionSettings:
    """BLIP's ViT; the defaults are ImageReward's ``create_vit('large', 224)``."""

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BlipVisionSettings:
        return from_mapping(cls, values, "imagereward.vision")

    def to_config(self):
        from transformers import BlipVisionConfig

        return BlipVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            intermediate_size=int(self.hidden_size * self.mlp_ratio),
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            layer_norm_eps=self.layer_norm_eps,
            hidden_act="gelu",  # timm's nn.GELU: the exact (erf) form
            attention_dropout=0.0,
        )


@dataclass(frozen=True)
class MedTextSettings:
    """BLIP's BERT, from ``med_config.json``; ``encoder_width`` is the image feature width (ViT-L: 1024)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int
    encoder_width: int

    @classmethod
    def from_med_config(cls, med_config: str | Path | Mapping[str, Any], encoder_width: int) -> MedTextSettings:
        """Read ``med_config.json`` (a path or its parsed dict). ImageReward overrides its
        ``encoder_width`` with the ViT's width, as ``BLIP_Pretrain`` does; so do we."""
        source = "med_config"
        if not isinstance(med_config, Mapping):
            source = f"med_config '{med_config}'"
            try:
                med_config = json.loads(Path(med_config).read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{source} cannot be read as JSON: {error}") from None
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings")
        absent = [k for k in required if k not in med_config]
        if absent:
            raise ValueError(f"{source} lacks {absent}; use the med_config.json published with ImageReward")
        if not med_config.get("add_cross_attention", False):
            raise ValueError(f"{source}: add_cross_attention must be true (ImageReward's BERT attends to the image)")
        if med_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: only absolute position embeddings are supported")
        settings = cls(
            vocab_size=int(med_config["vocab_size"]),
            hidden_size=int(med_config["hidden_size"]),
            num_layers=int(med_config["num_hidden_layers"]),
            num_heads=int(med_config["num_attention_heads"]),
            intermediate_size=int(med_config["intermediate_size"]),
            max_position_embeddings=int(med_config["max_position_embeddings"]),
            layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(med_config.get("hidden_act", "gelu")),
            pad_token_id=int(med_config.get("pad_token_id", 0)),
            encoder_width=int(encoder_width),
        )
        if settings.hidden_size % settings.num_heads:
            raise ValueError(f"{source}: hidden_size {settings.hidden_size} is not a multiple of num_attention_heads")
        from transformers.activations import ACT2FN

        if settings.hidden_act not in ACT2FN:
            raise ValueError(f"{source}: unknown hidden_act {settings.hidden_act!r}")
        return settings


# --- BLIP's BERT with 1024-wide cross-attention -----------------------------------------------------


class _QueryKeyValue(nn.Module):
    """``query``/``key``/``value`` of one attention; keys and values read ``kv_width``-wide states."""

    def __init__(self, width: int, kv_width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def forward(self, states: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.query(states)), heads(self.key(context)), heads(self.value(context))
        # softmax(q·kᵀ/√d + mask)·v, BERT's attention (scale 1/√head_dim is SDPA's default)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).flatten(2)


class _ResidualOutput(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's ``*Output`` blocks."""

    def __init__(self, in_width: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)  # BERT's (TensorFlow) name, kept for the checkpoint

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, settings: MedTextSettings, kv_width: int) -> None:
        super().__init__()
        # BERT names this submodule `self` (keys `attention.self.query.weight`, ...)
        self.add_module("self", _QueryKeyValue(settings.hidden_size, kv_width, settings.num_heads))
        self.output = _ResidualOutput(settings.hidden_size, settings.hidden_size, settings.layer_norm_eps)

    def forward(self, states: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self._modules["self"](states, context, mask), states)


class _Intermediate(nn.Module):
    def __init__(self, settings: MedTextSettings) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.dense = nn.Linear(settings.hidden_size, settings.intermediate_size)
        self.act = ACT2FN[settings.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _TextLayer(nn.Module):
    """Self-attention → cross-attention to the image → feed-forward (BLIP's ``mode='multimodal'``)."""

    def __init__(self, settings: MedTextSettings) -> None:
        super().__init__()
        self.attention = _Attention(settings, settings.hidden_size)
        self.crossattention = _Attention(settings, settings.encoder_width)
        self.intermediate = _Intermediate(settings)
        self.output = _ResidualOutput(settings.intermediate_size, settings.hidden_size, settings.layer_norm_eps)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        states = self.attention(states, states, mask)
        states = self.crossattention(states, image, None)  # every image token is attended to
        return self.output(self.intermediate(states), states)


class _Embeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (BLIP's BERT has no token-type embeddings)."""

    def __init__(self, settings: MedTextSettings) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            settings.vocab_size, settings.hidden_size, padding_idx=settings.pad_token_id
        )
        self.position_embeddings = nn.Embedding(settings.max_position_embeddings, settings.hidden_size)
        self.LayerNorm = nn.LayerNorm(settings.hidden_size, eps=settings.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)[None])


class _Encoder(nn.Module):
    def __init__(self, settings: MedTextSettings) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_TextLayer(settings) for _ in range(settings.num_layers))


class MedTextEncoder(nn.Module):
    """BLIP's BERT text encoder (``BertModel(add_pooling_layer=False)`` of BLIP's ``med.py``), multimodal mode."""

    def __init__(self, settings: MedTextSettings) -> None:
        super().__init__()
        self.settings = settings
        self.embeddings = _Embeddings(settings)
        self.encoder = _Encoder(settings)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states ``(N, L, hidden)`` of ``input_ids`` attending to ``image_embeds``."""
        states = self.embeddings(input_ids)
        # BERT's additive padding mask: 0 for tokens, -10000 for padding (finite, so float16-safe)
        mask = (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * -10000.0
        for layer in self.encoder.layer:
            states = layer(states, mask, image_embeds)
        return states


# --- the model -------------------------------------------------------------------------------------


class ImageRewardModel(nn.Module):
    """ImageReward: BLIP ViT + BLIP BERT + MLP head; :meth:`forward` returns the normalised reward."""

    def __init__(self, vision: BlipVisionSettings, text: MedTextSettings) -> None:
        super().__init__()
        from transformers import BlipVisionModel

        if text.encoder_width != vision.hidden_size:
            raise ValueError(
                f"the text encoder's cross-attention reads {text.encoder_width}-wide features but the ViT "
                f"gives {vision.hidden_size}"
            )
        self.vision_settings, self.text_settings = vision, text
        self.vision = BlipVisionModel(vision.to_config())
        self.text = MedTextEncoder(text)
        self.vision_proj = nn.Linear(vision.hidden_size, BLIP_EMBED_DIM)  # in the checkpoint, unused by the score
        self.text_proj = nn.Linear(text.hidden_size, BLIP_EMBED_DIM)  # in the checkpoint, unused by the score
        self.head = ScoreMLP(text.hidden_size)

    @property
    def image_size(self) -> int:
        return self.vision_settings.image_size

    def raw_reward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The head's output before normalisation, float32 ``(N,)``; ``pixel_values`` are preprocessed."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        states = self.text(input_ids, attention_mask, image_embeds)
        return self.head(states[:, 0])

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The ImageReward score ``(r − mean) / std``, float32 ``(N,)``."""
        return (self.raw_reward(pixel_values, input_ids, attention_mask) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD

    def load_official_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint", assign: bool = False
    ) -> None:
        """Load an ``ImageReward.pt`` state dict (official key names) strictly, through :data:`KEY_RULES`.

        ``assign=True`` takes the tensors themselves (for a model built on the ``meta`` device).
        Raises :class:`CheckpointMismatchError` naming missing, unexpected and mis-shaped keys (in the
        official naming) before anything is copied.
        """
        mapped: dict[str, torch.Tensor] = {}
        unmapped: list[str] = []
        for key, tensor in state_dict.items():
            if key == OPTIONAL_POSITION_IDS:
                expected = torch.arange(self.text_settings.max_position_embeddings)
                if tensor.numel() != expected.numel() or not torch.equal(tensor.reshape(-1).long(), expected):
                    raise CheckpointMismatchError(
                        f"{source}: {key} should be arange({expected.numel()}), got shape {tuple(tensor.shape)}"
                    )
                continue
            ours = official_to_ours(key)
            if ours is None:
                unmapped.append(key)
            else:
                mapped[ours] = tensor
        expected_state = self.state_dict()
        # keys no rule covers are unexpected too; keep them under their own names for the message
        given = {**mapped, **{f"<unmapped>{k}": state_dict[k] for k in unmapped}}
        check_state_dict(
            expected_state,
            given,
            f"ImageReward {source}",
            display=lambda k: k.removeprefix("<unmapped>") if k.startswith("<unmapped>") else ours_to_official(k),
            hint="Expected THUDM's ImageReward.pt (v1.0) with the med_config.json published beside it; "
            f"vision settings {self.vision_settings}, text settings from med_config {self.text_settings}",
        )
        self.load_state_dict(mapped, strict=True, assign=assign)


# --- tokenizer and scorer --------------------------------------------------------------------------


def load_blip_tokenizer(source: str):
    """BLIP's tokenizer: BERT's (a local folder or hub id such as ``bert-base-uncased``) plus ``[DEC]``
    as BOS and ``[ENC]`` as an extra special token, as BLIP's ``init_tokenizer`` does.

    A local folder is read with ``local_files_only`` (no hub lookup ever), and must hold BERT's vocabulary
    (``vocab.txt`` or ``tokenizer.json``): a folder with only ``tokenizer_config.json`` (a partial
    download) would otherwise load as a 5-token tokenizer without an error. With ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, a hub id
    is read from the cache only.
    """
    from transformers import BertTokenizer

    from dpok.models.checkpoints import _hub_offline

    path = Path(source).expanduser()
    local = path.exists()
    if local and not any((path / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise FileNotFoundError(
            f"imagereward: tokenizer folder '{source}' has no vocab.txt or tokenizer.json (a partial download?); save "
            "bert-base-uncased's tokenizer there again (docs/sd15.md)"
        )
    tokenizer = BertTokenizer.from_pretrained(str(path) if local else source, local_files_only=local or _hub_offline())
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def check_blip_tokenizer(tokenizer, vocab_size: int, pad_token_id: int = 0) -> None:
    """Refuse a tokenizer that is not BLIP's for a text encoder of ``vocab_size`` embeddings: its size
    must be ``vocab_size`` exactly, with ``[DEC]`` and ``[ENC]`` as the last two ids (where BLIP adds
    them to BERT's vocabulary) and BERT's ``[PAD]``/``[CLS]``/``[SEP]`` inside it. A wrong tokenizer would
    not fail later: it would score every prompt as ``[CLS] [UNK] … [SEP]``."""
    fix = "use bert-base-uncased's tokenizer (the complete folder) with the checkpoint's med_config.json (docs/sd15.md)"
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"imagereward: the tokenizer has {len(tokenizer)} tokens but the text encoder has {vocab_size} "
            f"embeddings (BERT's vocabulary + [DEC] + [ENC]); {fix}"
        )
    expected = {"[DEC]": vocab_size - 2, "[ENC]": vocab_size - 1, "[PAD]": pad_token_id}
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    wrong = {token: found[token] for token in expected if found[token] != expected[token]}
    missing = [token for token in ("[CLS]", "[SEP]") if tokenizer.convert_tokens_to_ids(token) == tokenizer.unk_token_id]
    if wrong or missing:
        raise ValueError(
            f"imagereward: the tokenizer's special tokens are not where BLIP expects them (ids {wrong} instead of "
            f"{ {k: expected[k] for k in wrong} }{', missing ' + str(missing) if missing else ''}); {fix}"
        )


class ImageRewardScorer:
    """Batched ImageReward scores of image tensors with their prompts, on one device and dtype.

    The ViT and BERT run in ``dtype`` (``"auto"``: float16 on CUDA, float32 on CPU); the head in float32.
    """

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        batch_size: int = 16,
    ) -> None:
        check_blip_tokenizer(tokenizer, model.text_settings.vocab_size, model.text_settings.pad_token_id)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        model.requires_grad_(False).eval()
        model.to(self.device)
        model.vision.to(self.dtype)
        model.text.to(self.dtype)
        model.head.to(torch.float32)
        self.model = model

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt"
        )
        return tokens["input_ids"], tokens["attention_mask"]

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores (float32, CPU, ``(N,)``) of ``pixels`` (float ``(N, 3, H, W)`` in [0, 1]), one prompt each."""
        if isinstance(prompts, str) or len(prompts) != pixels.shape[0]:
            raise ValueError(f"need one prompt per image: {pixels.shape[0]} images, prompts {prompts!r:.80}")
        input_ids, attention_mask = self.tokenize(prompts)
        scores = []
        for start in range(0, pixels.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            images = clip_preprocess(pixels[part].to(self.device), self.model.image_size).to(self.dtype)
            scores.append(
                self.model(images, input_ids[part].to(self.device), attention_mask[part].to(self.device)).cpu()
            )
        return torch.cat(scores) if scores else torch.zeros(0)


def build_imagereward_model(
    med_config: str | Path | Mapping[str, Any], vision: BlipVisionSettings | Mapping[str, Any] | None = None
) -> ImageRewardModel:
    """An ImageReward model with random weights (``vision``: BLIP ViT settings, default ViT-L/16 at 224)."""
    vision = vision if isinstance(vision, BlipVisionSettings) else BlipVisionSettings.from_dict(vision)
    return ImageRewardModel(vision, MedTextSettings.from_med_config(med_config, vision.hidden_size))


def load_imagereward(
    checkpoint: str | Path,
    med_config: str | Path,
    tokenizer: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    batch_size: int = 16,
    vision: Mapping[str, Any] | None = None,
) -> ImageRewardScorer:
    """The official ImageReward from its files: ``ImageReward.pt``, ``med_config.json`` and a BERT tokenizer.

    The model is built on the ``meta`` device (no random initialisation of 450M parameters) and takes
    the checkpoint's tensors after the strict key check.
    """
    with torch.device("meta"):
        model = build_imagereward_model(med_config, vision)
    state = load_weights_file(checkpoint)
    model.load_official_state_dict(state, source=f"checkpoint '{checkpoint}'", assign=True)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:  # a buffer outside the state dict would have no values
        raise RuntimeError(f"ImageReward: tensors without values after loading: {left_on_meta[:5]}")
    return ImageRewardScorer(model, load_blip_tokenizer(tokenizer), device, dtype, batch_size)


def official_state_dict(model: ImageRewardModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official ``ImageReward.pt`` names (with BLIP's ``position_ids``)."""
    state = {ours_to_official(k): v.detach().clone() for k, v in model.state_dict().items()}
    state[OPTIONAL_POSITION_IDS] = torch.arange(model.text_settings.max_position_embeddings)[None]
    return state


TINY_WORDS = (
    "a an and the of in on at with colored green red blue yellow rabbit cat dog four wolves park moon photo "
    "circle square triangle left right"
).split()
TINY_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 48, "num_layers": 2, "num_heads": 4}


def write_tiny_imagereward(folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write a tiny random-weight ImageReward in the official file layout, for tests and smoke runs.

    ``ImageReward.pt`` (official key names), ``med_config.json`` (BLIP's format) and a BERT tokenizer
    folder on a few words; returns the ``imagereward`` reward options (``vision`` gives the tiny ViT).
    """
    from transformers import BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *TINY_WORDS]
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(
        folder / "tokenizer"
    )
    med_config = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 4,
        "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,
        "encoder_width": 32, "add_cross_attention": True,
    }
    (folder / "med_config.json").write_text(json.dumps(med_config, indent=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_imagereward_model(med_config, TINY_VISION)
        with torch.no_grad():
            # BlipVisionConfig initialises with std 1e-10, which makes every image look alike; and spread
            # the head's output, so that scores differ visibly between images
            for module in [*model.vision.modules(), *model.head.layers]:
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.weight.normal_(0.0, 1.0 / math.sqrt(module.weight[0].numel()))
            model.vision.embeddings.class_embedding.normal_()
            model.vision.embeddings.position_embedding.normal_()
    torch.save(official_state_dict(model), folder / "ImageReward.pt")
    return {
        "checkpoint": str(folder / "ImageReward.pt"),
        "med_config": str(folder / "med_config.json"),
        "tokenizer": str(folder / "tokenizer"),
        "vision": dict(TINY_VISION),
    }


__all__ = [
    "IMAGEREWARD_MEAN",
    "IMAGEREWARD_STD",
    "KEY_RULES",
    "TEXT_MAX_LENGTH",
    "BlipVisionSettings",
    "ImageRewardModel",
    "ImageRewardScorer",
    "MedTextEncoder",
    "MedTextSettings",
    "build_imagereward_model",
    "check_blip_tokenizer",
    "load_blip_tokenizer",
    "load_imagereward",
    "official_state_dict",
    "official_to_ours",
    "ours_to_official",
    "write_tiny_imagereward",
]

"""OpenCLIP checkpoints (HPSv2.1's ViT-H/14) as transformers' ``CLIPModel``, by an explicit key mapping.

OpenCLIP's ``CLIP`` and transformers' ``CLIPModel`` are the same network for the ViT-H/14 family
(pre-norm transformer blocks, exact GELU, LayerNorm eps 1e-5, class-token pooling with ``ln_post``, a
causal text transformer read at the end-of-text token, bias-free projections): only the parameter names
and two layouts differ. OpenCLIP keeps each attention's query, key and value projections in one
``in_proj_weight`` ``(3·width, width)`` (``nn.MultiheadAttention``), transformers in three ``Linear``; and
OpenCLIP's projections are matrices applied as ``x @ proj``, transformers' ``Linear`` weights are their
transposes.

Key mapping (OpenCLIP key → ``CLIPModel`` key; ``N`` a block index):

=========================================================  ==============================================================
``visual.conv1.weight``                                    ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding``                                 ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``                            ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre.*``                                        ``vision_model.pre_layrnorm.*`` (transformers' spelling)
``visual.transformer.resblocks.N.*``                       ``vision_model.encoder.layers.N.*`` (block table below)
``visual.ln_post.*``                                       ``vision_model.post_layernorm.*``
``visual.proj`` ``(width, dim)``                           ``visual_projection.weight`` = its transpose
``token_embedding.weight``                                 ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                                   ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.N.*``                              ``text_model.encoder.layers.N.*`` (block table below)
``ln_final.*``                                             ``text_model.final_layer_norm.*``
``text_projection`` ``(width, dim)``                       ``text_projection.weight`` = its transpose
``logit_scale``                                            ``logit_scale``
=========================================================  ==============================================================

In a block: ``ln_1`` → ``layer_norm1``, ``ln_2`` → ``layer_norm2``, ``attn.in_proj_weight``/``attn.in_proj_bias``
→ ``self_attn.{q,k,v}_proj.weight``/``.bias`` (its three row blocks, in that order), ``attn.out_proj`` →
``self_attn.out_proj``, ``mlp.c_fc`` → ``mlp.fc1``, ``mlp.c_proj`` → ``mlp.fc2``.

One key is optional: ``attn_mask``, the text transformer's causal mask, which old OpenCLIP versions saved
with the weights; transformers builds it. Every other key must be mapped and every parameter filled, with
the shapes the configuration asks for, or :class:`~dpok.models.checkpoints.CheckpointMismatchError` names
the differing keys in OpenCLIP's naming before anything is loaded. ``tests/models/test_openclip.py``
checks the mapping against an independent OpenCLIP forward.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from dpok.models.checkpoints import CheckpointMismatchError

OPTIONAL_KEYS = ("attn_mask",)

# (OpenCLIP name, CLIPModel name) of whole keys; "~T" marks a matrix stored transposed
_TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("visual.proj", "visual_projection.weight~T"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("text_projection", "text_projection.weight~T"),
    ("logit_scale", "logit_scale"),
)
_TOWERS = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("transformer.resblocks.", "text_model.encoder.layers."))
_BLOCK = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
          ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))
_IN_PROJ = re.compile(r"attn\.in_proj_(weight|bias)$")
_QKV = ("q_proj", "k_proj", "v_proj")
_OURS_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)$")


def _block_key(rest: str) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] | None:
    """CLIPModel keys (relative to the block) and how each is taken from the OpenCLIP tensor."""
    match = _IN_PROJ.match(rest)
    if match:
        kind = match.group(1)
        return [(f"self_attn.{name}.{kind}", lambda t, i=i: _third(t, i)) for i, name in enumerate(_QKV)]
    for theirs, ours in _BLOCK:
        if rest.startswith(theirs) and rest[len(theirs):] in ("weight", "bias"):
            return [(ours + rest[len(theirs):], lambda t: t)]
    return None


def _third(tensor: torch.Tensor, index: int) -> torch.Tensor:
    if tensor.shape[0] % 3:
        raise ValueError(f"in_proj has {tensor.shape[0]} rows, not a multiple of 3")
    return tensor.chunk(3, dim=0)[index]


def openclip_key_targets(key: str) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] | None:
    """The ``CLIPModel`` key(s) an OpenCLIP key becomes, each with its tensor transform; None if unmapped."""
    for theirs, ours in _TOP_LEVEL:
        if key == theirs:
            if ours.endswith("~T"):
                return [(ours[:-2], lambda t: t.t())]
            return [(ours, lambda t: t)]
    for theirs, ours in _TOWERS:
        if key.startswith(theirs):
            index, _, rest = key[len(theirs):].partition(".")
            if not index.isdigit():
                return None
            targets = _block_key(rest)
            return None if targets is None else [(f"{ours}{index}.{name}", f) for name, f in targets]
    return None


def openclip_name(clip_key: str) -> str:
    """The OpenCLIP key a ``CLIPModel`` key comes from (for messages in the checkpoint's own naming)."""
    for theirs, ours in _TOP_LEVEL:
        if clip_key == ours.removesuffix("~T"):
            return theirs
    for theirs, ours in _TOWERS:
        if clip_key.startswith(ours):
            index, _, rest = clip_key[len(ours):].partition(".")
            qkv = _OURS_QKV.match(rest)
            if qkv:
                return f"{theirs}{index}.attn.in_proj_{qkv.group(2)}"
            for their_part, our_part in _BLOCK:
                if rest.startswith(our_part):
                    return f"{theirs}{index}.{their_part}{rest[len(our_part):]}"
    return clip_key


_UNMAPPED = "<unmapped>"


def convert_openclip_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str, hint: str = ""
) -> dict[str, torch.Tensor]:
    """``state`` (OpenCLIP keys) under ``CLIPModel`` keys, checked against ``expected`` (a ``CLIPModel``'s
    state dict, or its shapes): every key mapped, every parameter filled, every shape right.

    Raises:
        CheckpointMismatchError: naming the missing, unexpected and mis-shaped keys in OpenCLIP's naming.
    """
    from dpok.models.checkpoints import check_state_dict

    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in OPTIONAL_KEYS:
            continue
        targets = openclip_key_targets(key)
        if targets is None:
            converted[_UNMAPPED + key] = tensor
            continue
        try:
            for ours, transform in targets:
                converted[ours] = transform(tensor)
        except ValueError as error:
            raise CheckpointMismatchError(f"{source}: {key} {tuple(tensor.shape)}: {error}; nothing was loaded") from None
    wanted = {k: v for k, v in expected.items() if not k.endswith("position_ids")}  # constant buffers
    check_state_dict(
        wanted, converted, source,
        display=lambda k: k.removeprefix(_UNMAPPED) if k.startswith(_UNMAPPED) else openclip_name(k),
        hint=hint,
    )
    return converted


def clip_to_openclip_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict in OpenCLIP's layout (for writing tiny OpenCLIP-format checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        name = openclip_name(key)
        if name == key and key not in dict(_TOP_LEVEL).keys():
            raise KeyError(f"no OpenCLIP name for CLIPModel key {key!r}")
        if name.endswith(("in_proj_weight", "in_proj_bias")):
            pending.setdefault(name, {})[_OURS_QKV.search(key).group(1)] = tensor
        elif (name, key) in (("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight")):
            out[name] = tensor.t().contiguous()
        else:
            out[name] = tensor.clone()
    for name, parts in pending.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


__all__ = [
    "OPTIONAL_KEYS",
    "clip_to_openclip_state_dict",
    "convert_openclip_state_dict",
    "openclip_key_targets",
    "openclip_name",
]

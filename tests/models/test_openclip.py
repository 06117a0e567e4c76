"""HPSv2.1's OpenCLIP checkpoint as transformers' CLIPModel: the key mapping against an independent OpenCLIP
forward on seeded random weights, and wrong checkpoints refused with their keys named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpok.models.checkpoints import CheckpointMismatchError
from dpok.models.clip_scores import clip_from_state_dict
from dpok.models.openclip import clip_to_openclip_state_dict, convert_openclip_state_dict

# A tiny OpenCLIP ViT config (the ViT-H/14 family's structure at toy size): embed_dim, vision width, layers,
# heads, patch, image size; text width, layers, heads, vocabulary, context length.
TINY = dict(embed=24, v_width=48, v_layers=2, v_heads=4, patch=8, image=32, t_width=32, t_layers=2, t_heads=4,
            vocab=40, context=12)


def openclip_layout(c: dict) -> dict[str, tuple[int, ...]]:
    """Every key of an OpenCLIP ``CLIP`` (ViT image tower, transformer text tower) and its shape, written out
    from OpenCLIP's published architecture (model.py / transformer.py), independently of the mapping."""
    grid = c["image"] // c["patch"]

    def blocks(prefix: str, width: int, layers: int) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            shapes |= {
                b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
                b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
                b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
                b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,),
            }
        return shapes

    v, t = c["v_width"], c["t_width"]
    return {
        "visual.conv1.weight": (v, 3, c["patch"], c["patch"]),
        "visual.class_embedding": (v,),
        "visual.positional_embedding": (grid * grid + 1, v),
        "visual.ln_pre.weight": (v,), "visual.ln_pre.bias": (v,),
        **blocks("visual.", v, c["v_layers"]),
        "visual.ln_post.weight": (v,), "visual.ln_post.bias": (v,),
        "visual.proj": (v, c["embed"]),
        "token_embedding.weight": (c["vocab"], t),
        "positional_embedding": (c["context"], t),
        **blocks("", t, c["t_layers"]),
        "ln_final.weight": (t,), "ln_final.bias": (t,),
        "text_projection": (t, c["embed"]),
        "logit_scale": (),
    }


def random_openclip_state(c: dict, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in openclip_layout(c).items():
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif key == "logit_scale":
            state[key] = torch.tensor(4.6052)  # log(100), as trained CLIPs
        else:
            fan_in = shape[-1] if len(shape) > 1 else 1
            state[key] = torch.randn(shape, generator=generator) / (fan_in**0.5 if len(shape) > 1 else 2)
    return state


def reference_forward(state: dict, c: dict, images: torch.Tensor, tokens: torch.Tensor, pool_at=None):
    """OpenCLIP's ``CLIP.encode_image`` / ``encode_text`` (normalised) restated in plain torch on its own state
    dict: pre-norm residual blocks of ``nn.MultiheadAttention`` (one in_proj) and a c_fc → GELU → c_proj MLP;
    the image read at the class token after ``ln_post``, the text under a causal mask at the end-of-text
    token, ``argmax`` of the token ids; both through ``x @ proj``."""

    def block(x, prefix, heads, causal):
        def ln(h, name):
            return F.layer_norm(h, h.shape[-1:], state[name + ".weight"], state[name + ".bias"], 1e-5)

        h = ln(x, prefix + "ln_1")
        q, k, v = F.linear(h, state[prefix + "attn.in_proj_weight"], state[prefix + "attn.in_proj_bias"]).chunk(3, -1)
        n, length, width = q.shape
        q, k, v = (t.reshape(n, length, heads, -1).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / (width // heads) ** 0.5
        if causal:
            logits = logits + torch.full((length, length), float("-inf")).triu(1)
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, length, width)
        x = x + F.linear(out, state[prefix + "attn.out_proj.weight"], state[prefix + "attn.out_proj.bias"])
        h = F.gelu(F.linear(ln(x, prefix + "ln_2"), state[prefix + "mlp.c_fc.weight"], state[prefix + "mlp.c_fc.bias"]))
        return x + F.linear(h, state[prefix + "mlp.c_proj.weight"], state[prefix + "mlp.c_proj.bias"])

    def ln(h, name):
        return F.layer_norm(h, h.shape[-1:], state[name + ".weight"], state[name + ".bias"], 1e-5)

    x = F.conv2d(images, state["visual.conv1.weight"], stride=c["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = ln(x + state["visual.positional_embedding"], "visual.ln_pre")
    for i in range(c["v_layers"]):
        x = block(x, f"visual.transformer.resblocks.{i}.", c["v_heads"], causal=False)
    image = ln(x[:, 0], "visual.ln_post") @ state["visual.proj"]

    t = state["token_embedding.weight"][tokens] + state["positional_embedding"]
    for i in range(c["t_layers"]):
        t = block(t, f"transformer.resblocks.{i}.", c["t_heads"], causal=True)
    t = ln(t, "ln_final")
    at = tokens.argmax(-1) if pool_at is None else pool_at
    text = t[torch.arange(t.shape[0]), at] @ state["text_projection"]
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1), state["logit_scale"].exp()


def clip_config(c: dict):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(hidden_size=c["t_width"], intermediate_size=4 * c["t_width"], num_hidden_layers=c["t_layers"],
                         num_attention_heads=c["t_heads"], vocab_size=c["vocab"], max_position_embeddings=c["context"],
                         hidden_act="gelu", bos_token_id=c["vocab"] - 2, eos_token_id=c["vocab"] - 1, pad_token_id=0),
        vision_config=dict(hidden_size=c["v_width"], intermediate_size=4 * c["v_width"], num_hidden_layers=c["v_layers"],
                           num_attention_heads=c["v_heads"], image_size=c["image"], patch_size=c["patch"],
                           hidden_act="gelu"),
        projection_dim=c["embed"],
    )


def tokens_like_openclip(c: dict, lengths: list[int], seed: int) -> torch.Tensor:
    """[SOT] words [EOT] then zeros, as OpenCLIP's tokenizer pads (EOT the largest id)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), c["context"], dtype=torch.long)
    for row, length in enumerate(lengths):
        words = torch.randint(1, c["vocab"] - 2, (length,), generator=generator)
        tokens[row, : length + 2] = torch.cat([torch.tensor([c["vocab"] - 2]), words, torch.tensor([c["vocab"] - 1])])
    return tokens


def converted_model(state, c):
    from transformers import CLIPModel

    config = clip_config(c)
    with torch.device("meta"):
        expected = CLIPModel(config).state_dict()
    return clip_from_state_dict(config, convert_openclip_state_dict(state, expected, "test"), "test", "", converted=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_converted_model_scores_as_openclip_does(seed):
    state = random_openclip_state(TINY, seed)
    model = converted_model(state, TINY)
    generator = torch.Generator().manual_seed(10 + seed)
    images = torch.randn(4, 3, TINY["image"], TINY["image"], generator=generator)
    tokens = tokens_like_openclip(TINY, [1, 4, 9, 3], seed)
    image_ref, text_ref, scale_ref = reference_forward(state, TINY, images, tokens)
    with torch.no_grad():
        out = model(input_ids=tokens, pixel_values=images, attention_mask=(tokens != 0).long())
    cos = (image_ref * text_ref).sum(-1)
    torch.testing.assert_close(torch.diagonal(out.logits_per_image) / scale_ref, cos, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.diagonal(out.logits_per_image), scale_ref * cos, rtol=0, atol=1e-5 * 100)
    torch.testing.assert_close(out.image_embeds, image_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.text_embeds, text_ref, rtol=0, atol=1e-5)
    assert cos.std() > 0.01  # the pairs are told apart: a constant score would pass the comparison trivially


def test_padding_after_the_end_of_text_token_changes_nothing():
    """The causal mask keeps OpenCLIP's zero padding out of the EOT feature; CLIPTokenizer pads with other ids."""
    state = random_openclip_state(TINY, 3)
    model = converted_model(state, TINY)
    tokens = tokens_like_openclip(TINY, [2, 5], 3)
    other_padding = torch.where(tokens == 0, torch.full_like(tokens, 7), tokens)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(input_ids=tokens, pixel_values=images).text_embeds
        b = model(input_ids=other_padding, pixel_values=images).text_embeds
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_the_mapping_is_a_bijection_onto_the_openclip_layout():
    state = random_openclip_state(TINY, 4)
    model = converted_model(state, TINY)
    back = clip_to_openclip_state_dict(model.state_dict())
    assert {k: tuple(v.shape) for k, v in back.items()} == openclip_layout(TINY)
    for key, tensor in state.items():
        torch.testing.assert_close(back[key], tensor, rtol=0, atol=0, msg=key)


def test_an_old_checkpoint_with_its_attention_mask_buffer_loads():
    state = random_openclip_state(TINY, 5)
    state["attn_mask"] = torch.full((TINY["context"], TINY["context"]), float("-inf")).triu(1)
    converted_model(state, TINY)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.pop("visual.proj"), r"1 missing key\(s\): visual\.proj\b"),
        (lambda s: s.pop("transformer.resblocks.1.attn.in_proj_weight"),
         r"missing key\(s\): transformer\.resblocks\.1\.attn\.in_proj_weight"),
        (lambda s: s.update({"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(48)}),
         r"1 unexpected key\(s\): visual\.transformer\.resblocks\.0\.ls_1\.gamma"),
        (lambda s: s.update({"module.logit_scale": torch.zeros(())}), r"unexpected key\(s\): module\.logit_scale"),
        (lambda s: s.update({"positional_embedding": torch.zeros(77, 32)}),
         r"shape mismatch\(es\): positional_embedding \(77, 32\) != \(12, 32\)"),
    ],
    ids=["missing-proj", "missing-in-proj", "layer-scale", "ddp-prefix", "context-length"],
)
def test_a_wrong_checkpoint_is_refused_naming_its_keys(change, expected):
    state = random_openclip_state(TINY, 0)
    change(state)
    with pytest.raises(CheckpointMismatchError, match=expected) as error:
        converted_model(state, TINY)
    assert "nothing was loaded" in str(error.value)


def test_another_architecture_is_refused_with_its_keys():
    """An ImageReward (BLIP) checkpoint given as HPSv2's: every key is named as unexpected or missing."""
    from dpok.models.imagereward import build_imagereward_model, official_state_dict

    med = {"vocab_size": 30, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
           "intermediate_size": 64, "max_position_embeddings": 40, "add_cross_attention": True}
    blip = official_state_dict(build_imagereward_model(med, {"image_size": 32, "patch_size": 8, "hidden_size": 48,
                                                             "num_layers": 1, "num_heads": 4}))
    with pytest.raises(CheckpointMismatchError) as error:
        converted_model(blip, TINY)
    message = str(error.value)
    assert "78 missing key(s): logit_scale, positional_embedding" in message  # all of them, in OpenCLIP's names
    assert "unexpected key(s): blip." in message

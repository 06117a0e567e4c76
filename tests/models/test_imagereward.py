"""ImageReward on torch: the official key layout loads strictly, the forward matches an independent
re-statement of the official code, and scores are batched, deterministic and normalised once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dpok.models.aesthetic import clip_preprocess
from dpok.models.checkpoints import CheckpointMismatchError
from dpok.models.imagereward import (
    IMAGEREWARD_MEAN,
    IMAGEREWARD_STD,
    TEXT_MAX_LENGTH,
    BlipVisionSettings,
    ImageRewardScorer,
    MedTextEncoder,
    MedTextSettings,
    build_imagereward_model,
    load_blip_tokenizer,
    load_imagereward,
    official_state_dict,
    official_to_ours,
    ours_to_official,
    write_tiny_imagereward,
)

PROMPTS = ["a green colored rabbit.", "a cat and a dog.", "four wolves in the park.", "a dog on the moon.", "zebra"]


def official_layout(vision: dict, med: dict) -> dict[str, tuple[int, ...]]:
    """Every key of ImageReward.pt and its shape, written out from BLIP's code (vit.py, med.py,
    blip_pretrain.py) and ImageReward.py, independently of the model's key rules."""
    w, p, n = vision["hidden_size"], vision["patch_size"], (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    h, inner = med["hidden_size"], med["intermediate_size"]
    vocab, positions = med["vocab_size"], med["max_position_embeddings"]
    shapes = {
        "blip.visual_encoder.cls_token": (1, 1, w),
        "blip.visual_encoder.pos_embed": (1, n, w),
        "blip.visual_encoder.patch_embed.proj.weight": (w, 3, p, p),
        "blip.visual_encoder.patch_embed.proj.bias": (w,),
        "blip.visual_encoder.norm.weight": (w,),
        "blip.visual_encoder.norm.bias": (w,),
    }
    for i in range(vision["num_layers"]):
        b = f"blip.visual_encoder.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (w,), b + "norm1.bias": (w,),
            b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
            b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
            b + "norm2.weight": (w,), b + "norm2.bias": (w,),
            b + "mlp.fc1.weight": (4 * w, w), b + "mlp.fc1.bias": (4 * w,),
            b + "mlp.fc2.weight": (w, 4 * w), b + "mlp.fc2.bias": (w,),
        }
    e = "blip.text_encoder.embeddings."
    shapes |= {
        e + "position_ids": (1, positions),
        e + "word_embeddings.weight": (vocab, h),
        e + "position_embeddings.weight": (positions, h),
        e + "LayerNorm.weight": (h,), e + "LayerNorm.bias": (h,),
    }
    for j in range(med["num_hidden_layers"]):
        b = f"blip.text_encoder.encoder.layer.{j}."
        for attention, kv_width in (("attention", h), ("crossattention", w)):
            a = f"{b}{attention}."
            shapes |= {
                a + "self.query.weight": (h, h), a + "self.query.bias": (h,),
                a + "self.key.weight": (h, kv_width), a + "self.key.bias": (h,),
                a + "self.value.weight": (h, kv_width), a + "self.value.bias": (h,),
                a + "output.dense.weight": (h, h), a + "output.dense.bias": (h,),
                a + "output.LayerNorm.weight": (h,), a + "output.LayerNorm.bias": (h,),
            }
        shapes |= {
            b + "intermediate.dense.weight": (inner, h), b + "intermediate.dense.bias": (inner,),
            b + "output.dense.weight": (h, inner), b + "output.dense.bias": (h,),
            b + "output.LayerNorm.weight": (h,), b + "output.LayerNorm.bias": (h,),
        }
    shapes |= {
        "blip.vision_proj.weight": (256, w), "blip.vision_proj.bias": (256,),
        "blip.text_proj.weight": (256, h), "blip.text_proj.bias": (256,),
    }
    for index, (rows, cols) in zip((0, 2, 4, 6, 7), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16))):
        shapes |= {f"mlp.layers.{index}.weight": (rows, cols), f"mlp.layers.{index}.bias": (rows,)}
    return shapes


def random_official_checkpoint(vision: dict, med: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_layout(vision, med).items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1])[None]
        elif "norm" in key.lower() and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = shape[-1] if len(shape) == 2 else 1
            state[key] = torch.randn(shape, generator=generator) / max(fan_in, 1) ** 0.5
    return state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny ImageReward files (official layout) plus a second, independently written random checkpoint."""
    folder = tmp_path_factory.mktemp("imagereward")
    options = write_tiny_imagereward(folder)
    med = json.loads((folder / "med_config.json").read_text())
    state = random_official_checkpoint(options["vision"], med)
    torch.save(state, folder / "independent.pt")
    return {"options": options, "med": med, "state": state, "independent": folder / "independent.pt", "folder": folder}


@pytest.fixture(scope="module")
def scorer(tiny) -> ImageRewardScorer:
    options = {**tiny["options"], "checkpoint": tiny["independent"]}
    return load_imagereward(**options, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, 40, 56, generator=generator)  # not square: exercises resize + centre crop


def test_the_official_layout_loads_strictly_and_every_tensor_lands_where_its_rule_says(tiny, scorer):
    loaded = scorer.model.state_dict()
    official = tiny["state"]
    assert len(loaded) == len(official) - 1  # all but the optional position_ids buffer
    for key, tensor in official.items():
        if key.endswith("position_ids"):
            continue
        ours = official_to_ours(key)
        assert ours in loaded, key
        torch.testing.assert_close(loaded[ours], tensor, rtol=0, atol=0)
        assert ours_to_official(ours) == key


def test_the_exported_layout_is_the_official_one(tiny):
    model = build_imagereward_model(tiny["med"], tiny["options"]["vision"])
    exported = {k: tuple(v.shape) for k, v in official_state_dict(model).items()}
    assert exported == official_layout(tiny["options"]["vision"], tiny["med"])


def test_a_checkpoint_without_position_ids_loads_too(tiny):
    model = build_imagereward_model(tiny["med"], tiny["options"]["vision"])
    state = {k: v for k, v in tiny["state"].items() if not k.endswith("position_ids")}
    model.load_official_state_dict(state)
    wrong = {**tiny["state"], "blip.text_encoder.embeddings.position_ids": torch.zeros(1, 40, dtype=torch.long)}
    with pytest.raises(CheckpointMismatchError, match="position_ids should be arange"):
        model.load_official_state_dict(wrong)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.pop("blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"),
         r"1 missing key\(s\): blip\.text_encoder\.encoder\.layer\.1\.crossattention\.self\.key\.weight"),
        (lambda s: s.pop("mlp.layers.7.bias"), r"missing key\(s\): mlp\.layers\.7\.bias"),
        (lambda s: s.update({"blip.text_encoder.pooler.dense.weight": torch.zeros(32, 32)}),
         r"1 unexpected key\(s\): blip\.text_encoder\.pooler\.dense\.weight"),
        (lambda s: s.update({"logit_scale": torch.zeros(())}), r"unexpected key\(s\): logit_scale"),
        (lambda s: s.update({"blip.visual_encoder.pos_embed": torch.zeros(1, 5, 48)}),
         r"shape mismatch\(es\): blip\.visual_encoder\.pos_embed \(1, 5, 48\) != \(1, 17, 48\)"),
    ],
    ids=["missing-text", "missing-head", "extra-pooler", "extra-unmapped", "shape"],
)
def test_a_checkpoint_with_a_missing_or_extra_key_is_refused_before_loading(tiny, tmp_path, change, expected):
    state = dict(tiny["state"])
    change(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError, match=expected) as error:
        load_imagereward(**{**tiny["options"], "checkpoint": tmp_path / "bad.pt"}, device="cpu")
    assert "nothing was loaded" in str(error.value) and "med_config" in str(error.value)


def reference_scores(state: dict, vision: dict, med: dict, images: torch.Tensor, ids, mask) -> torch.Tensor:
    """ImageReward.score re-stated from BLIP's vit.py/med.py and ImageReward.py with the official tensors."""
    def linear(x, name):
        return F.linear(x, state[name + ".weight"], state[name + ".bias"])

    def norm(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps)

    def attend(q, k, v, heads, additive_mask=None):
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if additive_mask is not None:
            scores = scores + additive_mask
        out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(out.shape[0], -1, q.shape[1] * q.shape[-1])

    # BLIP's VisionTransformer.forward
    v = "blip.visual_encoder."
    x = F.conv2d(images, state[v + "patch_embed.proj.weight"], state[v + "patch_embed.proj.bias"],
                 stride=vision["patch_size"]).flatten(2).transpose(1, 2)
    x = torch.cat([state[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + state[v + "pos_embed"][:, : x.shape[1]]
    for i in range(vision["num_layers"]):
        b = f"{v}blocks.{i}."
        h = norm(x, b + "norm1", 1e-6)
        q, k, val = linear(h, b + "attn.qkv").chunk(3, dim=-1)
        x = x + linear(attend(q, k, val, vision["num_heads"]), b + "attn.proj")
        x = x + linear(F.gelu(linear(norm(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    image = norm(x, v + "norm", 1e-6)
    # BLIP's BertModel.forward, mode="multimodal", no pooler
    t = "blip.text_encoder."
    eps, heads = med["layer_norm_eps"], med["num_attention_heads"]
    s = state[t + "embeddings.word_embeddings.weight"][ids]
    s = s + state[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    s = norm(s, t + "embeddings.LayerNorm", eps)
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for j in range(med["num_hidden_layers"]):
        b = f"{t}encoder.layer.{j}."
        for attention, context, m in (("attention", None, additive), ("crossattention", image, None)):
            a = f"{b}{attention}."
            ctx = s if context is None else context
            q, k, val = linear(s, a + "self.query"), linear(ctx, a + "self.key"), linear(ctx, a + "self.value")
            out = attend(q, k, val, heads, m)
            s = norm(linear(out, a + "output.dense") + s, a + "output.LayerNorm", eps)
        inner = linear(F.gelu(linear(s, b + "intermediate.dense")), b + "output.dense")
        s = norm(inner + s, b + "output.LayerNorm", eps)
    r = s[:, 0]
    for index in (0, 2, 4, 6, 7):
        r = linear(r, f"mlp.layers.{index}")
    return (r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


def test_scores_match_the_official_computation(tiny, scorer, pixels):
    ids, mask = scorer.tokenize(PROMPTS)
    images = clip_preprocess(pixels, tiny["options"]["vision"]["image_size"])
    expected = reference_scores(tiny["state"], tiny["options"]["vision"], tiny["med"], images, ids, mask)
    got = scorer.score(pixels, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert got.std() > 1e-3  # images and prompts are told apart


def test_text_encoder_equals_transformers_blip_text_model(tiny):
    from transformers import BlipTextConfig, BlipTextModel

    med = tiny["med"]
    settings = MedTextSettings.from_med_config(med, encoder_width=48)
    torch.manual_seed(0)
    ours = MedTextEncoder(settings).eval()
    theirs = BlipTextModel(
        BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=48,
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            layer_norm_eps=med["layer_norm_eps"], hidden_act="gelu", is_decoder=True, pad_token_id=0,
        ),
        add_pooling_layer=False,
    ).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same parameter names: BLIP's BERT
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, med["vocab_size"], (3, 9), generator=generator)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    image = torch.randn(3, 17, 48, generator=generator)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, encoder_hidden_states=image, is_decoder=False)
        torch.testing.assert_close(ours(ids, mask, image), expected.last_hidden_state, rtol=1e-4, atol=1e-5)


def test_scores_are_deterministic_and_independent_of_the_batch_size(tiny, scorer, pixels):
    first = scorer.score(pixels, PROMPTS)
    assert torch.equal(first, scorer.score(pixels, PROMPTS))
    for batch_size in (1, 5):
        other = ImageRewardScorer(scorer.model, scorer.tokenizer, "cpu", "float32", batch_size)
        torch.testing.assert_close(other.score(pixels, PROMPTS), first, rtol=0, atol=1e-5)
    singles = torch.cat([scorer.score(pixels[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(singles, first, rtol=0, atol=1e-5)


def test_the_normalisation_is_applied_exactly_once(tiny, pixels):
    scorer = load_imagereward(**tiny["options"], device="cpu")
    head = scorer.model.head.layers
    with torch.no_grad():
        for layer in head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        head[-1].bias.fill_(0.5)  # raw reward 0.5 whatever the input
    scores = scorer.score(pixels, PROMPTS)
    torch.testing.assert_close(scores, torch.full((5,), (0.5 - IMAGEREWARD_MEAN) / IMAGEREWARD_STD))
    raw = scorer.model.raw_reward(
        clip_preprocess(pixels, 32), *scorer.tokenize(PROMPTS)
    )
    torch.testing.assert_close(raw, torch.full((5,), 0.5))


def test_tokenizer_is_blips_and_pads_to_35(tiny):
    tokenizer = load_blip_tokenizer(tiny["options"]["tokenizer"])
    assert len(tokenizer) == tiny["med"]["vocab_size"]  # BERT's vocabulary + [DEC] + [ENC], as the checkpoint
    assert tokenizer.bos_token == "[DEC]" and "[ENC]" in tokenizer.convert_ids_to_tokens(tokenizer.all_special_ids)
    scorer = ImageRewardScorer(build_imagereward_model(tiny["med"], tiny["options"]["vision"]), tokenizer, "cpu")
    ids, mask = scorer.tokenize(["A green colored rabbit.", " ".join(["dog"] * 50)])
    assert ids.shape == mask.shape == (2, TEXT_MAX_LENGTH)
    expected = ["[CLS]", "a", "green", "colored", "rabbit", ".", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(ids[0, :7].tolist()) == expected
    assert mask[0].sum() == 7 and mask[1].sum() == TEXT_MAX_LENGTH
    assert tokenizer.convert_ids_to_tokens(int(ids[1, -1])) == "[SEP]"  # truncated, not cut mid-way


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tiny):
    small = dict(tiny["med"], vocab_size=10)
    model = build_imagereward_model(small, tiny["options"]["vision"])
    with pytest.raises(ValueError, match="tokenizer has 36 tokens but the text encoder has 10 embeddings"):
        ImageRewardScorer(model, load_blip_tokenizer(tiny["options"]["tokenizer"]), "cpu")


def test_a_smaller_tokenizer_or_misplaced_special_tokens_are_refused(tiny, tmp_path):
    """Issue: a 5-token tokenizer (offline hub fallback, partial download) scored every prompt as [UNK]s."""
    from transformers import BertTokenizer

    from dpok.models.imagereward import check_blip_tokenizer

    model = build_imagereward_model(dict(tiny["med"], vocab_size=40), tiny["options"]["vision"])
    with pytest.raises(ValueError, match="tokenizer has 36 tokens but the text encoder has 40 embeddings"):
        ImageRewardScorer(model, load_blip_tokenizer(tiny["options"]["tokenizer"]), "cpu")
    five = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])})
    five.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    with pytest.raises(ValueError, match="tokenizer has 7 tokens but the text encoder has 36"):
        check_blip_tokenizer(five, tiny["med"]["vocab_size"])
    # the right size, but [DEC]/[ENC] at the front instead of after BERT's words
    words = ["[PAD]", "[UNK]", "[DEC]", "[ENC]", "[SEP]", *[f"w{i}" for i in range(29)]]
    shuffled = BertTokenizer(vocab={t: i for i, t in enumerate(words)})  # adds [CLS] and [MASK]: 36 tokens
    with pytest.raises(ValueError, match=r"not where BLIP expects them \(ids \{'\[DEC\]': 2, '\[ENC\]': 3\}"):
        check_blip_tokenizer(shuffled, 36)
    check_blip_tokenizer(load_blip_tokenizer(tiny["options"]["tokenizer"]), tiny["med"]["vocab_size"])


def test_a_partial_tokenizer_folder_is_refused_without_a_hub_lookup(tiny, tmp_path, monkeypatch):
    import shutil

    partial = tmp_path / "bert"
    partial.mkdir()
    shutil.copy(Path(tiny["options"]["tokenizer"]) / "tokenizer_config.json", partial)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even online, a local folder never asks the hub
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: pytest.fail("hub lookup"))
    with pytest.raises(FileNotFoundError, match="has no vocab.txt or tokenizer.json"):
        load_blip_tokenizer(str(partial))


def test_half_precision_scores_stay_close_and_the_head_stays_float32(tiny, scorer, pixels):
    half = load_imagereward(**{**tiny["options"], "checkpoint": tiny["independent"]}, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in half.model.vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.model.text.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.model.head.parameters()} == {torch.float32}
    reference = scorer.score(pixels, PROMPTS)
    scores = half.score(pixels, PROMPTS)
    assert scores.dtype == torch.float32
    assert (scores - reference).abs().max() < 0.1 * reference.std() + 0.02


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"add_cross_attention": False}, "add_cross_attention must be true"),
        ({"position_embedding_type": "relative_key"}, "only absolute position embeddings"),
        ({"hidden_act": "swishy"}, "unknown hidden_act"),
    ],
)
def test_med_config_is_checked(tiny, edit, message):
    with pytest.raises(ValueError, match=message):
        MedTextSettings.from_med_config({**tiny["med"], **edit}, encoder_width=48)
    incomplete = {k: v for k, v in tiny["med"].items() if k != "vocab_size"}
    with pytest.raises(ValueError, match=r"lacks \['vocab_size'\]"):
        MedTextSettings.from_med_config(incomplete, encoder_width=48)


def test_default_vision_settings_are_imagereward_vit_large():
    assert BlipVisionSettings() == BlipVisionSettings(224, 16, 1024, 24, 16, 4.0, 1e-6)
    with pytest.raises(ValueError, match=r"unknown key\(s\) imagereward\.vision\.depth"):
        BlipVisionSettings.from_dict({"depth": 3})


def test_the_imagereward_reward_scores_the_originals_preprocessing(tiny):
    """8-bit images are resized with PIL exactly as the original's transform (issue: the tensor resize
    moved scores by up to 1.9e-3 when enlarging sharp images)."""
    import numpy as np

    from dpok.models.aesthetic import CLIP_MEAN, CLIP_STD
    from dpok.rewards import get_reward_fn
    from helpers import pil_clip_transform, sharp_image

    images = np.stack([sharp_image(40, 56, seed=s) for s in range(4)])
    prompts = ["a green colored rabbit", "a cat", "four wolves in the park", "a dog on the moon"]
    options = {**tiny["options"], "checkpoint": str(tiny["independent"])}
    reward = get_reward_fn("imagereward", **options, device="cpu")
    scorer = load_imagereward(**options, device="cpu")
    size = scorer.model.image_size
    restated = torch.from_numpy(np.stack([pil_clip_transform(image, size) for image in images])).float()
    pixels = restated * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    np.testing.assert_allclose(reward(images, prompts), scorer.score(pixels, prompts).double().numpy(), rtol=0, atol=1e-4)

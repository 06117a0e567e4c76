"""The CLIP-family rewards (pickscore, hpsv2, clip_score) on tiny random-weight models: each reference's
preprocessing on real images, each formula against its reference computation, local files checked
before loading, strict weights, the tokenizer's size, half precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import dpok.models.clip_scores as clip_scores
from dpok.models.aesthetic import CLIP_MEAN, CLIP_STD
from dpok.models.checkpoints import CheckpointMismatchError
from dpok.models.clip_scores import ClipImageTransform, write_tiny_clip_rewards
from dpok.rewards import get_reward_fn
from helpers import pil_clip_transform

PROMPTS = ["a red circle", "a blue square on the left", "a cat on the moon", "the green triangle",
           "a dog and a rabbit", "a yellow moon", "an old cat", "a blue circle and a red square"]


def real_crop(height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
    """A region of a real figure (an earlier grid of generated images, kept beside this test so that regenerating
    the results never changes it): real edges, text and colour."""
    picture = np.asarray(Image.open(Path(__file__).with_name("real_figure.png")).convert("RGB"))
    return np.ascontiguousarray(picture[top : top + height, left : left + width])


# (height, width, top, left): enlarging and shrinking, square and not, and odd crop margins (203×200 →
# 227×224: margin 3; the whole 866×640 figure → 303×224: margin 79), where the two references differ
CROPS = [(203, 200, 40, 30), (866, 640, 0, 0), (61, 90, 300, 200), (512, 512, 100, 64), (300, 500, 20, 100)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_clip_rewards(tmp_path_factory.mktemp("clip_rewards"))


def _transform(rounding: str) -> ClipImageTransform:
    return ClipImageTransform(224, CLIP_MEAN, CLIP_STD, rounding)


@pytest.mark.parametrize("crop", CROPS, ids=lambda c: f"{c[0]}x{c[1]}")
def test_pickscore_preprocessing_is_clip_image_processors(crop):
    """PickScore's reference is transformers' CLIPImageProcessor (laion/CLIP-ViT-H-14's settings)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = real_crop(*crop)
    theirs = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})(
        images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
    ours = _transform("transformers")(image[None]).numpy()
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("crop", CROPS, ids=lambda c: f"{c[0]}x{c[1]}")
def test_openclip_and_openai_preprocessing_is_torchvisions(crop):
    """HPSv2 (OpenCLIP's preprocess_val) and CLIP score (OpenAI's clip.load) use torchvision's Resize,
    CenterCrop, ToTensor and Normalize, restated independently in helpers.pil_clip_transform."""
    image = real_crop(*crop)
    np.testing.assert_allclose(_transform("torchvision")(image[None])[0].numpy(), pil_clip_transform(image, 224),
                               rtol=0, atol=1e-4)


def test_the_references_place_an_odd_crop_one_pixel_apart():
    image = real_crop(203, 200, 40, 30)  # resized to 227×224: a margin of 3, split 1/2 or 2/1
    gap = (_transform("torchvision")(image[None]) - _transform("transformers")(image[None])).abs().max()
    assert gap > 0.1


def test_shapes_world_renders_preprocess_as_the_reference():
    from dpok.world import render, sample_scene

    rng = np.random.default_rng(0)
    renders = [render(sample_scene(p, rng)) for p in ("a red circle", "two blue squares", "a green triangle")]
    side_by_side = np.concatenate(renders[:2], axis=1)  # 32×64: enlarged, not square
    for image in (renders[2], side_by_side):
        np.testing.assert_allclose(_transform("torchvision")(image[None])[0].numpy(), pil_clip_transform(image, 224),
                                   rtol=0, atol=1e-4)


def test_preprocessor_configs_old_and_new_read_alike_and_others_are_refused(tmp_path):
    common = {"do_resize": True, "do_center_crop": True, "do_normalize": True, "resample": 3,
              "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    old = tmp_path / "old.json"  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's form
    old.write_text(json.dumps({**common, "size": 224, "crop_size": 224, "feature_extractor_type": "CLIPFeatureExtractor"}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({**common, "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}))
    assert ClipImageTransform.from_preprocessor_config(old, "torchvision", "r") == _transform("torchvision")
    assert ClipImageTransform.from_preprocessor_config(new, "torchvision", "r") == _transform("torchvision")
    bilinear = tmp_path / "bilinear.json"
    bilinear.write_text(json.dumps({**common, "size": 224, "crop_size": 256, "resample": 2}))
    with pytest.raises(ValueError, match=r"bilinear.json' asks for preprocessing .*crop_size 256.*resample 2"):
        ClipImageTransform.from_preprocessor_config(bilinear, "torchvision", "r")


def _processor_inputs(folder: str, images: np.ndarray, prompts: list[str], size: int = 32):
    """PickScore's published scoring code: CLIPProcessor's image processor and tokenizer."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pixels = CLIPImageProcessorPil.from_pretrained(folder)(images=[Image.fromarray(i) for i in images],
                                                           return_tensors="pt")["pixel_values"]
    tokens = CLIPTokenizer.from_pretrained(folder)(prompts, padding=True, truncation=True, max_length=16,
                                                   return_tensors="pt")
    return pixels, tokens


def test_pickscore_is_the_papers_scaled_cosine(files):
    """Kirstain et al.: logit_scale.exp() * (text_embs @ image_embs.T), embeddings L2-normalised, as their
    model card computes it with transformers' CLIPModel and processor."""
    from transformers import CLIPModel

    images = np.stack([real_crop(203, 200, 40 + 50 * i, 30 + 50 * i) for i in range(8)])
    reward = get_reward_fn("pickscore", **files["pickscore"], device="cpu", batch_size=3)
    model = CLIPModel.from_pretrained(files["pickscore"]["model"]).eval()
    pixels, tokens = _processor_inputs(files["pickscore"]["processor"], images, PROMPTS)
    with torch.no_grad():
        image_embs = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text_embs = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        expected = model.logit_scale.exp() * (text_embs * image_embs).sum(-1)
    scores = reward(images, PROMPTS)
    np.testing.assert_allclose(scores, expected.double().numpy(), rtol=1e-5, atol=1e-5)
    assert scores.std() > 0.1


def test_hpsv2_is_the_openclip_cosine(files):
    """The HPSv2 score: the diagonal of image_features @ text_features.T of the (normalised) OpenCLIP
    features, here from the independent OpenCLIP forward of tests/models/test_openclip.py."""
    from test_openclip import reference_forward
    from transformers import CLIPTokenizer

    state = torch.load(files["hpsv2"]["checkpoint"], weights_only=True)
    config = json.loads((Path(files["hpsv2"]["processor"]) / "config.json").read_text())
    v, t = config["vision_config"], config["text_config"]
    c = dict(patch=v["patch_size"], v_layers=v["num_hidden_layers"], v_heads=v["num_attention_heads"],
             t_layers=t["num_hidden_layers"], t_heads=t["num_attention_heads"])
    images = np.stack([real_crop(61, 90, 100 * i, 50 * i) for i in range(8)])  # enlarged, cropped
    tokenizer = CLIPTokenizer.from_pretrained(files["hpsv2"]["processor"])
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    pool_at = (tokens == tokenizer.eos_token_id).int().argmax(-1)  # the EOT (OpenCLIP: the largest id)
    pixels = torch.from_numpy(np.stack([pil_clip_transform(i, 32) for i in images])).float()
    image_ref, text_ref, _ = reference_forward(state, c, pixels, tokens, pool_at=pool_at)
    scores = get_reward_fn("hpsv2", **files["hpsv2"], device="cpu")(images, PROMPTS)
    np.testing.assert_allclose(scores, (image_ref * text_ref).sum(-1).double().numpy(), rtol=0, atol=1e-5)
    assert np.abs(scores).max() <= 1 and scores.std() > 0.01


def test_clip_score_is_hessels_clipped_cosine(files, tmp_path):
    square = np.stack([real_crop(64, 64, 50 * i, 40 * i) for i in range(8)])  # no crop: both roundings agree
    weights = load_file(Path(files["pickscore"]["model"]) / "model.safetensors")
    cosine = get_reward_fn("pickscore", **files["pickscore"], device="cpu")(square, PROMPTS)
    cosine = cosine / float(weights["logit_scale"].exp())
    # the same model with its text projection negated: every cosine changes sign, and is clipped to 0
    flipped = _copy(files["pickscore"]["model"], tmp_path)
    save_file({**weights, "text_projection.weight": -weights["text_projection.weight"]}, flipped / "model.safetensors")
    for weight in (100.0, 2.5):
        scores = get_reward_fn("clip_score", **files["clip_score"], weight=weight, device="cpu")(square, PROMPTS)
        np.testing.assert_allclose(scores, weight * np.maximum(cosine, 0), rtol=1e-6, atol=1e-6)
        scores = get_reward_fn("clip_score", model=str(flipped), weight=weight, device="cpu")(square, PROMPTS)
        np.testing.assert_allclose(scores, weight * np.maximum(-cosine, 0), rtol=1e-6, atol=1e-6)
    assert np.all(cosine > 0.05)  # so the flipped model's scores are all clipped
    with pytest.raises(ValueError, match="weight must be a positive number"):
        get_reward_fn("clip_score", **files["clip_score"], weight=-1)


def test_weights_load_on_the_first_call_only(files, monkeypatch):
    loads = []
    real = clip_scores.load_state_files
    monkeypatch.setattr(clip_scores, "load_state_files", lambda folder: loads.append(folder) or real(folder))
    reward = get_reward_fn("pickscore", **files["pickscore"], device="cpu")
    assert loads == []
    images = np.stack([real_crop(40, 40, 10 * i) for i in range(3)])
    first = reward(images, PROMPTS[:3])
    np.testing.assert_array_equal(reward(images, PROMPTS[:3]), first)
    assert len(loads) == 1


def test_half_precision_runs_the_towers_in_bfloat16_and_stays_close(files):
    images = np.stack([real_crop(203, 200, 40 + 50 * i, 30) for i in range(8)])
    scorer_options = dict(files["pickscore"], device="cpu")
    full = get_reward_fn("pickscore", **scorer_options)(images, PROMPTS)
    half_reward = get_reward_fn("pickscore", **scorer_options, dtype="bfloat16")
    half = half_reward(images, PROMPTS)
    assert half.dtype == np.float64
    assert np.abs(half - full).max() < 0.1 * full.std() + 0.02
    config = clip_scores.read_clip_config(Path(files["pickscore"]["model"]), "t")
    model = clip_scores.clip_from_state_dict(config, clip_scores.load_state_files(Path(files["pickscore"]["model"])), "t", "")
    scorer = clip_scores.ClipScorer(model, None, None, "cpu", "bfloat16")
    assert {p.dtype for p in scorer.model.parameters()} == {torch.bfloat16}
    assert abs(scorer.logit_scale - float(load_file(Path(files["pickscore"]["model"]) / "model.safetensors")["logit_scale"].exp())) < 1e-5


# --- bad input: a named error when the reward is built (before any weights load), or on loading --------


def _copy(folder: str, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def test_a_folder_without_its_tokenizer_or_processor_is_refused_when_built(files, tmp_path):
    folder = _copy(files["pickscore"]["model"], tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"pickscore: `processor` folder .* has no tokenizer \(tokenizer.json, "
                                                r"or vocab.json and merges.txt\); fetch .*docs/sd15.md"):
        get_reward_fn("pickscore", model=files["pickscore"]["model"], processor=str(folder))
    folder = _copy(files["pickscore"]["model"], tmp_path, "no_preprocessor")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="clip_score: `model` folder .* has no preprocessor_config.json"):
        get_reward_fn("clip_score", model=str(folder))
    with pytest.raises(FileNotFoundError, match="hpsv2: `checkpoint` file 'nowhere/HPS_v2.1_compressed.pt' does not exist"):
        get_reward_fn("hpsv2", checkpoint="nowhere/HPS_v2.1_compressed.pt", processor=files["hpsv2"]["processor"])
    folder = _copy(files["pickscore"]["model"], tmp_path, "no_weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"`model` folder .* has no weights \(model.safetensors"):
        get_reward_fn("pickscore", model=str(folder), processor=files["pickscore"]["processor"])


def test_a_tokenizer_of_the_wrong_size_or_end_token_is_refused_when_built(files, tmp_path):
    """The offline trap: a tokenizer folder that loads with a handful of tokens would score every prompt alike."""
    from dpok.models.tokenizer import build_word_tokenizer

    folder = _copy(files["pickscore"]["processor"], tmp_path)
    (folder / "tokenizer.json").unlink()
    build_word_tokenizer(["a", "cat"], model_max_length=16).save_pretrained(folder)  # 5 tokens or so
    with pytest.raises(ValueError, match=r"the tokenizer in .* has \d+ tokens but the text model has \d+ embeddings"):
        get_reward_fn("pickscore", model=files["pickscore"]["model"], processor=str(folder))
    config = json.loads((Path(files["pickscore"]["model"]) / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 5
    model = _copy(files["pickscore"]["model"], tmp_path, "other_eos")
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ends prompts with token 1 but the text model reads its features at token 5"):
        get_reward_fn("pickscore", model=str(model), processor=files["pickscore"]["processor"])


def test_a_config_that_is_not_clip_is_refused_when_built(files, tmp_path):
    model = _copy(files["pickscore"]["model"], tmp_path)
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"config.json' is not a CLIPModel config \(model_type 'bert'"):
        get_reward_fn("pickscore", model=str(model), processor=files["pickscore"]["processor"])


def test_weights_with_missing_or_unexpected_keys_are_refused_naming_them(files, tmp_path):
    model = _copy(files["pickscore"]["model"], tmp_path)
    state = load_file(model / "model.safetensors")
    del state["visual_projection.weight"]
    state["vision_model.head.weight"] = torch.zeros(3)
    save_file(state, model / "model.safetensors")
    reward = get_reward_fn("pickscore", model=str(model), processor=files["pickscore"]["processor"], device="cpu")
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key\(s\): visual_projection.weight; "
                                                      r"1 unexpected key\(s\): vision_model.head.weight"):
        reward(real_crop(40, 40)[None], ["a cat"])


def test_an_hpsv2_checkpoint_of_another_architecture_is_refused_naming_its_keys(files, tmp_path):
    state = torch.load(files["hpsv2"]["checkpoint"], weights_only=True)
    state["visual.proj"] = state["visual.proj"][:, :10]
    state.pop("ln_final.bias")
    torch.save({"epoch": 1, "name": "hps", "state_dict": state}, tmp_path / "hps.pt")  # a training checkpoint's wrapping
    reward = get_reward_fn("hpsv2", checkpoint=str(tmp_path / "hps.pt"), processor=files["hpsv2"]["processor"],
                           device="cpu")
    with pytest.raises(CheckpointMismatchError, match=r"missing key\(s\): ln_final.bias;.*shape mismatch\(es\): "
                                                      r"visual.proj \(10, 48\) != \(24, 48\)"):
        reward(real_crop(40, 40)[None], ["a cat"])

"""The aesthetic model (CLIP embedding → L2 norm → LAION MLP) and CLIP's preprocessing on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dpok.images import uint8_images_to_pixels
from dpok.models.aesthetic import (
    CLIP_MEAN,
    CLIP_STD,
    SCORE_MLP_KEYS,
    ScoreMLP,
    clip_preprocess,
    load_aesthetic_model,
    load_score_mlp,
    pil_resize_crop,
    write_tiny_aesthetic,
)
from dpok.models.checkpoints import CheckpointMismatchError
from helpers import pil_clip_transform, sharp_image


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(int)
    return np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)


# enlarging (the shapes world's 32 px, 40×56) and shrinking (512, 300×500, 500×300)
SHAPES = [(32, 32), (40, 56), (512, 512), (300, 500), (500, 300)]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_rewards_preprocessing_is_the_originals_exactly(shape):
    images = np.stack([sharp_image(*shape, seed=s) for s in range(3)])
    ours = clip_preprocess(pil_resize_crop(images, 224), 224).double().numpy()
    theirs = np.stack([pil_clip_transform(image, 224) for image in images])
    assert ours.shape == theirs.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_differentiable_tensor_path_stays_within_pil_rounding_of_the_original(shape):
    """What a caller of clip_preprocess on tensors gives up: PIL rounds to uint8 between its passes."""
    images = np.stack([sharp_image(*shape, seed=s) for s in range(8)])
    ours = clip_preprocess(uint8_images_to_pixels(images), 224).double().numpy()
    theirs = np.stack([pil_clip_transform(image, 224) for image in images])
    pixel_difference = np.abs(ours - theirs) * np.array(CLIP_STD)[None, :, None, None] * 255
    # measured: at most 26/255 (40×56 enlarged), 10/255 (512² shrunk); means below 0.1/255
    assert pixel_difference.max() <= 30.0 and pixel_difference.mean() < 0.1


def test_the_aesthetic_reward_scores_the_originals_preprocessing(tiny):
    from dpok.rewards import get_reward_fn

    images = np.stack([sharp_image(40, 56, seed=s) for s in range(4)])
    reward = get_reward_fn("aesthetic", **tiny, device="cpu")
    model = load_aesthetic_model(**tiny, device="cpu")
    size = model.image_size
    restated = torch.from_numpy(np.stack([pil_clip_transform(image, size) for image in images])).float()
    # the restated transform is already normalised: undo CLIP's normalisation for model.score's input
    pixels = restated * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    np.testing.assert_allclose(reward(images, [""] * 4), model.score(pixels, 4).double().numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(512, 512), (300, 500), (500, 300), (40, 56)])
def test_tensor_preprocessing_matches_torchvision_on_pil_within_rounding(shape):
    image = smooth_image(*shape, seed=sum(shape))
    ours = clip_preprocess(uint8_images_to_pixels(image[None]), 224)[0].double().numpy()
    theirs = pil_clip_transform(image, 224)
    assert ours.shape == theirs.shape == (3, 224, 224)
    # PIL rounds to uint8 between its two passes; in pixel units the difference stays within 3/255
    pixel_difference = np.abs(ours - theirs) * np.array(CLIP_STD)[:, None, None] * 255
    assert pixel_difference.max() <= 3.01 and pixel_difference.mean() < 0.6


def test_centre_crop_keeps_the_middle_of_a_wide_image():
    image = np.zeros((32, 96, 3), dtype=np.uint8)
    image[:, 32:64] = 255  # a white middle third: exactly what the crop keeps
    out = clip_preprocess(uint8_images_to_pixels(image[None]), 32)[0]
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out, white[:, None, None].expand(3, 32, 32))


def test_score_mlp_has_the_laion_layout_and_is_affine():
    mlp = ScoreMLP(768).eval()
    assert tuple(mlp.state_dict()) == SCORE_MLP_KEYS
    assert [tuple(mlp.state_dict()[k].shape) for k in SCORE_MLP_KEYS[::2]] == [
        (1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)
    ]
    x, y = torch.randn(3, 768), torch.randn(3, 768)
    with torch.no_grad():  # no activation between the layers (the ReLUs are commented out upstream)
        torch.testing.assert_close(mlp(0.3 * x + 0.7 * y), 0.3 * mlp(x) + 0.7 * mlp(y), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_aesthetic(tmp_path_factory.mktemp("aesthetic"))


@pytest.fixture(scope="module")
def model(tiny):
    return load_aesthetic_model(**tiny, device="cpu")


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(5, 3, 40, 48, generator=torch.Generator().manual_seed(0))


def test_scores_are_the_laion_mlp_on_the_normalised_clip_embedding(tiny, model, pixels):
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(tiny["clip_model"]).eval()
    weights = torch.load(tiny["mlp_weights"], weights_only=True)
    with torch.no_grad():
        features = clip.get_image_features(pixel_values=clip_preprocess(pixels, 32))
        features = features if isinstance(features, torch.Tensor) else features.pooler_output
        x = features / features.norm(dim=-1, keepdim=True)
        for index in (0, 2, 4, 6, 7):
            x = x @ weights[f"layers.{index}.weight"].T + weights[f"layers.{index}.bias"]
    scores = model.score(pixels)
    torch.testing.assert_close(scores, x.squeeze(-1), rtol=1e-4, atol=1e-5)
    assert scores.std() > 1e-3


def test_the_embedding_is_l2_normalised(model, pixels):
    with torch.no_grad():
        embeddings = model.image_embeddings(pixels)
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(5))
        before = model.score(pixels)
        model.visual_projection.weight.mul_(3.0)  # a longer embedding, the same direction
        try:
            torch.testing.assert_close(model.score(pixels), before, rtol=1e-5, atol=1e-6)
        finally:
            model.visual_projection.weight.div_(3.0)


def test_scores_are_deterministic_and_independent_of_the_batch_size(model, pixels):
    first = model.score(pixels, batch_size=2)
    assert torch.equal(first, model.score(pixels, batch_size=2))
    for batch_size in (1, 5):
        torch.testing.assert_close(model.score(pixels, batch_size=batch_size), first, rtol=0, atol=1e-5)


def test_scoring_in_train_mode_is_refused(model, pixels):
    model.train()
    try:
        with pytest.raises(RuntimeError, match=r"call \.eval\(\)"):
            model.score(pixels)
    finally:
        model.eval()


def test_mlp_weights_are_loaded_strictly(tiny, tmp_path):
    weights = torch.load(tiny["mlp_weights"], weights_only=True)
    missing = {k: v for k, v in weights.items() if k != "layers.4.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key\(s\): layers\.4\.bias"):
        load_score_mlp(ScoreMLP(24), tmp_path / "missing.pth")
    torch.save({**weights, "layers.8.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected key\(s\): layers\.8\.weight"):
        load_score_mlp(ScoreMLP(24), tmp_path / "extra.pth")
    # the real file is for a 768-d ViT-L/14 embedding: refused on a 24-d CLIP, naming the shape
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.weight \(1024, 24\) != \(1024, 768\)"):
        load_score_mlp(ScoreMLP(768), tiny["mlp_weights"])


def test_a_clip_checkpoint_missing_vision_weights_is_refused(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "clip"
    shutil.copytree(tiny["clip_model"], folder)
    state = load_file(folder / "model.safetensors")
    del state["visual_projection.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="did not load its image tower"):
        load_aesthetic_model(str(folder), tiny["mlp_weights"], device="cpu")

"""Image batches between the sampler, the rewards and the evaluation: one convention, one set of converters.

Images travel as one ``(N, H, W, 3)`` uint8 array (RGB, 0-255): what the stock pipeline call returns once
rounded, what rewards score and what PNG files hold. The helpers here turn other forms into it and back:

- :func:`images_to_uint8`: float images in [0, 1] (a VAE decode, ``output_type="np"``) to uint8,
  rounding as diffusers does, so our sampler and the stock call give the same bytes;
- :func:`to_image_batch`: validate what a caller hands a reward (an array or a list of PIL images /
  arrays) and return one array, refusing floats rather than guessing their range;
- :func:`as_uint8_batch`: check an array a producer (a sampler) must return, converting nothing;
- :func:`uint8_images_to_pixels`: uint8 images to the float ``(N, 3, H, W)`` tensor in [0, 1] that image
  models take (torchvision's ``ToTensor``).

Pure numpy (torch is imported only by :func:`uint8_images_to_pixels`), and nothing else of ``dpok``:
the shapes world, the rewards, RL and evaluation all import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


def images_to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] to uint8, rounding as diffusers' ``numpy_to_pil`` does."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def to_image_batch(images: Any) -> np.ndarray:
    """Validate images and return them as one ``(N, H, W, 3)`` uint8 array.

    Accepts a uint8 array ``(N, H, W, 3)``, or a list of RGB PIL images or of ``(H, W, 3)`` uint8
    arrays of one size. Anything else raises a TypeError/ValueError that names the problem and the
    expected form (floats are refused rather than guessed at: [0, 1] and [0, 255] look alike).
    """
    if isinstance(images, np.ndarray):
        batch = images
        where = "images"
    elif isinstance(images, (list, tuple)):
        arrays = [_image_to_array(image, index) for index, image in enumerate(images)]
        if not arrays:
            return np.zeros((0, 32, 32, 3), dtype=np.uint8)
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise ValueError(f"all images must have one size, got shapes {sorted(shapes)}")
        return np.stack(arrays)
    else:
        raise TypeError(
            "images must be a uint8 numpy array (N, H, W, 3) or a list of RGB PIL images / "
            f"(H, W, 3) uint8 arrays, got {type(images).__name__}"
        )
    if batch.dtype != np.uint8:
        raise TypeError(
            f"{where} must have dtype uint8 (values 0-255), got {batch.dtype}; convert floats in [0, 1] "
            "with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    if batch.ndim != 4 or batch.shape[-1] != 3:
        hint = " (for one image pass image[None])" if batch.ndim == 3 and batch.shape[-1] == 3 else ""
        raise ValueError(f"{where} must have shape (N, H, W, 3) with 3 RGB channels, got {batch.shape}{hint}")
    if batch.shape[1] < 8 or batch.shape[2] < 8:
        raise ValueError(f"{where} must be at least 8x8 pixels, got {batch.shape[1]}x{batch.shape[2]}")
    return batch


def _image_to_array(image: Any, index: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        array = image
    elif hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image, without importing PIL here
        if image.mode != "RGB":
            raise ValueError(f"images[{index}] is a PIL image in mode {image.mode!r}; convert it with .convert('RGB')")
        array = np.asarray(image)
    else:
        raise TypeError(f"images[{index}] must be a PIL image or a (H, W, 3) uint8 array, got {type(image).__name__}")
    if array.dtype != np.uint8:
        raise TypeError(f"images[{index}] must have dtype uint8, got {array.dtype}")
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"images[{index}] must have shape (H, W, 3), got {array.shape}")
    return array


def as_uint8_batch(images: Any, count: int, producer: str = "the caller") -> np.ndarray:
    """``images`` as a ``(count, H, W, 3)`` uint8 array (``np.asarray``, nothing converted), else a ValueError
    naming ``producer``.

    Stricter than :func:`to_image_batch`: for a producer whose contract is exactly this array (a sampler),
    anything else is a bug to report, not an input to accept.
    """
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[0] != count or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{producer} returned {array.shape} {array.dtype}; expected ({count}, H, W, 3) uint8")
    return array


def uint8_images_to_pixels(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 images to a float32 ``(N, 3, H, W)`` tensor in [0, 1] (torchvision's ToTensor)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


__all__ = ["as_uint8_batch", "images_to_uint8", "to_image_batch", "uint8_images_to_pixels"]

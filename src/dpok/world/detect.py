"""Read objects back from images: the perception shared by the judge and the quality score.

Rules (all sizes are fractions of the canvas, pixels quoted at 32x32):

1. **Pixel colour.** Every pixel is read as a mix ``BACKGROUND + a * (colour - BACKGROUND)`` of the
   background and one :data:`PALETTE` colour: for each colour, ``a`` is the pixel's projection onto
   the line from background to that colour (clipped to [0, 1]) and the *residual* its RGB distance
   from that segment. The colour with the smallest residual wins; the pixel is *off-palette* if even
   that residual exceeds :data:`COLOR_TOLERANCE` (60 RGB units; palette colours are >= 161 apart),
   else it is that colour if ``a >= 0.5`` and background otherwise. On a clean render this is exact
   (``a`` is 0 or 1); on a blurred edge it splits the mixed pixels where the sharp edge was, so
   objects keep their size and shape instead of being eroded by the blur (a small triangle's tip
   would otherwise vanish and leave a circle-like blob).
   Separately, each pixel's distance to the nearest *pure* reference colour (palette or background)
   is kept: the quality score uses it to see blur and noise.
2. **Objects.** Pixels of one palette colour form objects by 8-connectivity
   (``scipy.ndimage.label``, one call per colour for the whole batch). Components smaller than
   :data:`MIN_OBJECT_AREA` (6 px) are *specks*, not objects.
3. **Shape.** Three scale-free features of each object: ``fill`` = area / bounding-box area (square 1,
   circle pi/4, triangle 1/2), ``v`` = the centroid's height inside the box measured from the top
   (0.5 for the symmetric circle and square, 2/3 for an upward triangle), and the log aspect ratio of
   the box (0 for all three). The shape is the nearest prototype in units of
   :data:`SHAPE_FEATURE_SCALES`; if even the nearest is farther than :data:`SHAPE_MATCH_LIMIT`
   (4 units: elongated smears, rings, merged objects) the object has no known shape (``None``).
   Clean renders (7-20 px) lie within 1.4 units of their own prototype and >= 2.3 from the others.
4. **Position.** The object's centroid (pixel centres at ``i + 0.5``).

Everything is vectorised over the batch; only per-image bookkeeping is Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from dpok.images import to_image_batch
from dpok.world.grammar import COLORS, SHAPES
from dpok.world.render import BACKGROUND, PALETTE

REFERENCE_COLORS = np.array([PALETTE[color] for color in COLORS] + [BACKGROUND], dtype=np.float32)
BACKGROUND_CLASS = len(COLORS)
OFF_PALETTE_CLASS = len(COLORS) + 1
COLOR_TOLERANCE = 60.0
MIN_OBJECT_AREA = 6 / 1024
SHAPE_PROTOTYPES = np.array(
    [
        (np.pi / 4, 0.5, 0.0),  # circle
        (1.0, 0.5, 0.0),  # square
        (0.5, 2 / 3, 0.0),  # triangle
    ]
)
SHAPE_FEATURE_SCALES = np.array([0.08, 0.05, 0.2])
SHAPE_MATCH_LIMIT = 4.0

if tuple(SHAPES) != ("circle", "square", "triangle"):  # pragma: no cover - rows above follow SHAPES
    raise AssertionError("SHAPE_PROTOTYPES rows must follow SHAPES order")

# Connectivity inside each image only: the batch axis is stacked, never connected.
_BATCH_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_BATCH_8_CONNECTIVITY[1] = True
_PIXELS_PER_CHUNK = 1 << 15  # (P, 4) temporaries of ~0.5 MB stay in cache
_BACKGROUND_RGB = REFERENCE_COLORS[BACKGROUND_CLASS]
_SPOKES = REFERENCE_COLORS[: len(COLORS)] - _BACKGROUND_RGB  # background -> each palette colour
_SPOKE_SQ = (_SPOKES**2).sum(axis=1)[None, :]


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image; ``shape`` is ``None`` when it resembles no known shape."""

    color: str
    shape: str | None
    cx: float
    cy: float
    area: int


@dataclass(frozen=True, eq=False)
class Detections:
    """What :func:`detect_batch` read from ``N`` images.

    Per-pixel arrays have shape ``(N, H, W)``. Per-object arrays have one entry per object, sorted by
    image; the objects of image ``i`` are rows ``starts[i]:starts[i + 1]``.
    """

    pixel_class: np.ndarray  # int8: COLORS index, BACKGROUND_CLASS or OFF_PALETTE_CLASS
    pixel_distance: np.ndarray  # float32: RGB distance to the nearest pure reference colour
    pixel_mix: np.ndarray  # float32: fraction of the pixel's palette colour in its mix with the background
    starts: np.ndarray  # (N + 1,) int64
    image: np.ndarray  # int64 image index
    color: np.ndarray  # int64 COLORS index
    shape: np.ndarray  # int64 SHAPES index, -1 for no known shape
    shape_distance: np.ndarray  # float64 distance to the nearest shape prototype (feature-scale units)
    area: np.ndarray  # int64 pixels
    cx: np.ndarray  # float64
    cy: np.ndarray  # float64
    speck_area: np.ndarray  # (N,) int64 palette-coloured pixels in components too small to be objects

    @property
    def num_images(self) -> int:
        return len(self.starts) - 1

    def objects(self, index: int) -> list[DetectedObject]:
        """The objects of image ``index`` as dataclasses (for tests, reports and debugging)."""
        rows = range(self.starts[index], self.starts[index + 1])
        return [
            DetectedObject(
                color=COLORS[self.color[row]],
                shape=SHAPES[self.shape[row]] if self.shape[row] >= 0 else None,
                cx=float(self.cx[row]),
                cy=float(self.cy[row]),
                area=int(self.area[row]),
            )
            for row in rows
        ]


def classify_pixels(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 1 for every pixel: ``(class, distance, mix)``, each of shape ``(N, H, W)``.

    ``class`` (int8) is a COLORS index, :data:`BACKGROUND_CLASS` or :data:`OFF_PALETTE_CLASS`;
    ``distance`` (float32) is the RGB distance to the nearest pure reference colour; ``mix``
    (float32) is the pixel's fraction ``a`` of its best palette colour (0 for off-palette pixels).
    """
    flat = batch.reshape(-1, 3)
    classes = np.empty(len(flat), dtype=np.int8)
    distances = np.empty(len(flat), dtype=np.float32)
    mixes = np.empty(len(flat), dtype=np.float32)
    for start in range(0, len(flat), _PIXELS_PER_CHUNK):
        # Memory-bound on (P, 4) arrays, so temporaries are reused in place.
        offset = flat[start : start + _PIXELS_PER_CHUNK].astype(np.float32)
        offset -= _BACKGROUND_RGB
        offset_sq = np.einsum("ij,ij->i", offset, offset)
        along = offset @ _SPOKES.T  # (P, 4): offset . (colour - background)
        mix = along / _SPOKE_SQ
        np.clip(mix, 0.0, 1.0, out=mix)
        # |offset - a * spoke|^2 = |offset|^2 + a * (a * |spoke|^2 - 2 * offset . spoke)
        residual_sq = mix * _SPOKE_SQ
        residual_sq -= along
        residual_sq -= along
        residual_sq *= mix
        best = residual_sq.argmin(axis=1)[:, None]
        best_residual_sq = np.take_along_axis(residual_sq, best, axis=1)[:, 0] + offset_sq
        best_mix = np.take_along_axis(mix, best, axis=1)[:, 0]
        cls = np.where(best_mix >= 0.5, best[:, 0], BACKGROUND_CLASS).astype(np.int8)
        off_palette = best_residual_sq > COLOR_TOLERANCE**2
        cls[off_palette] = OFF_PALETTE_CLASS
        best_mix[off_palette] = 0.0
        # Distance to the pure colours: |offset - spoke|^2 for the palette, |offset|^2 for the background.
        along *= -2
        along += _SPOKE_SQ
        pure_sq = offset_sq + np.minimum(along.min(axis=1), 0.0)
        classes[start : start + len(cls)] = cls
        distances[start : start + len(cls)] = np.sqrt(np.maximum(pure_sq, 0.0))
        mixes[start : start + len(cls)] = best_mix
    shape = batch.shape[:3]
    return classes.reshape(shape), distances.reshape(shape), mixes.reshape(shape)


def shape_features(fill: np.ndarray, v: np.ndarray, log_aspect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest shape prototype (rule 3): ``(SHAPES index or -1, distance in feature-scale units)``."""
    features = np.stack([fill, v, log_aspect], axis=-1)
    scaled = (features[:, None, :] - SHAPE_PROTOTYPES[None]) / SHAPE_FEATURE_SCALES
    distances = np.sqrt((scaled**2).sum(axis=-1))
    nearest = distances.argmin(axis=1)
    best = distances[np.arange(len(distances)), nearest]
    return np.where(best <= SHAPE_MATCH_LIMIT, nearest, -1), best


def detect_batch(images: Any) -> Detections:
    """Classify pixels and find objects in every image (rules 1-4 of the module docstring)."""
    batch = to_image_batch(images)
    n, height, width = batch.shape[:3]
    pixel_class, pixel_distance, pixel_mix = classify_pixels(batch)
    min_area = max(1, int(round(MIN_OBJECT_AREA * height * width)))

    labels = np.zeros((n, height, width), dtype=np.int32)
    label_color: list[np.ndarray] = []
    offset = 0
    for color_index in range(len(COLORS)):
        color_labels, count = ndimage.label(pixel_class == color_index, structure=_BATCH_8_CONNECTIVITY)
        if count:
            inside = color_labels > 0
            labels[inside] = color_labels[inside] + offset
            label_color.append(np.full(count, color_index, dtype=np.int64))
            offset += count
    colors_of_label = np.concatenate(label_color) if label_color else np.zeros(0, dtype=np.int64)

    areas = np.bincount(labels.ravel(), minlength=offset + 1)[1:]
    keep = areas >= min_area
    # Relabel so that specks vanish and kept objects are numbered 1..M.
    relabel = np.zeros(offset + 1, dtype=np.int32)
    relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    objects = relabel[labels]
    speck_area = ((labels > 0) & (objects == 0)).sum(axis=(1, 2)).astype(np.int64)

    flat = objects.ravel()
    foreground = np.flatnonzero(flat)
    ids = flat[foreground]
    count = int(keep.sum())
    area = np.bincount(ids, minlength=count + 1)[1:].astype(np.int64)
    sum_x = np.bincount(ids, weights=foreground % width, minlength=count + 1)[1:]
    sum_y = np.bincount(ids, weights=(foreground // width) % height, minlength=count + 1)[1:]
    boxes = ndimage.find_objects(objects) if count else []
    image = np.array([box[0].start for box in boxes], dtype=np.int64)
    y0 = np.array([box[1].start for box in boxes], dtype=np.int64)
    y1 = np.array([box[1].stop for box in boxes], dtype=np.int64)
    x0 = np.array([box[2].start for box in boxes], dtype=np.int64)
    x1 = np.array([box[2].stop for box in boxes], dtype=np.int64)

    safe_area = np.maximum(area, 1)
    cx = sum_x / safe_area + 0.5
    cy = sum_y / safe_area + 0.5
    box_h, box_w = (y1 - y0).astype(np.float64), (x1 - x0).astype(np.float64)
    fill = area / np.maximum(box_h * box_w, 1)
    v = (cy - y0) / np.maximum(box_h, 1)
    shape, shape_distance = shape_features(fill, v, np.log(np.maximum(box_w, 1) / np.maximum(box_h, 1)))

    color = colors_of_label[keep]
    order = np.argsort(image, kind="stable")
    starts = np.searchsorted(image[order], np.arange(n + 1))
    return Detections(
        pixel_class=pixel_class,
        pixel_distance=pixel_distance,
        pixel_mix=pixel_mix,
        starts=starts.astype(np.int64),
        image=image[order],
        color=color[order],
        shape=shape[order],
        shape_distance=shape_distance[order],
        area=area[order],
        cx=cx[order],
        cy=cy[order],
        speck_area=speck_area,
    )


def detect_objects(image: Any) -> list[DetectedObject]:
    """The objects in one image: a ``(H, W, 3)`` uint8 array or an RGB PIL image."""
    return detect_batch([image]).objects(0)


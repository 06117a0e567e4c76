"""Pictures people look at: labelled image grids and learning curves, as PIL images (PNG via the catalog)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(
    rows: Sequence[np.ndarray],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    scale: int = 3,
    gap: int = 2,
    label_width: int = 260,
) -> Image.Image:
    """A grid with one row per entry of ``rows`` (each a uint8 array (n, H, W, 3)), upscaled with
    nearest-neighbour so single pixels stay visible, and a text label per row and column."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    height, width = rows[0].shape[1:3]
    cell_h, cell_w = height * scale, width * scale
    n_cols = max(len(r) for r in rows)
    top = 16 if column_labels else 0
    left = label_width if row_labels else 0
    canvas = Image.new(
        "RGB", (left + n_cols * (cell_w + gap) + gap, top + len(rows) * (cell_h + gap) + gap), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels or []):
        draw.text((left + gap + c * (cell_w + gap), 2), str(label)[: cell_w // 6], fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = top + gap + r * (cell_h + gap)
        if row_labels:
            # Wrapped, not cut: a prompt's last word ("bottom", "circle") is often the one that matters.
            lines = textwrap.wrap(str(row_labels[r]), width=max(1, label_width // 6)) or [""]
            line_height = 12
            first = y + cell_h // 2 - (line_height * len(lines)) // 2
            for i, line in enumerate(lines):
                draw.text((4, first + i * line_height), line, fill=(0, 0, 0), font=font)
        for c, image in enumerate(row):
            tile = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (left + gap + c * (cell_w + gap), y))
    return canvas


def figure_to_image(figure) -> Image.Image:
    """Render a matplotlib figure to a PIL image (so it is saved through a pillow catalog entry)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def curves_figure(
    series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
    xlabels: dict[str, str] | None = None,
) -> Image.Image:
    """One panel per named (x, y) series; ``xlabels`` overrides ``xlabel`` for the panels it names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (name, (x, y)) in zip(axes[0], series.items()):
        ax.plot(x, y, lw=1.4)
        ax.set_title(name)
        ax.set_xlabel((xlabels or {}).get(name, xlabel))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_to_image(fig)

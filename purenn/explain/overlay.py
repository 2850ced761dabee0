"""Draw a heat map over a photo, side by side with the photo, with a caption; encode as PNG."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from purenn.io import atomic_write

COLORMAP = "turbo"
CAPTION_LINE = 14  # pixels per caption line


@lru_cache(maxsize=4)
def colormap_table(name: str = COLORMAP) -> np.ndarray:
    """uint8 ``(256, 3)`` RGB lookup table of a matplotlib colormap (imported on first use)."""
    from matplotlib import colormaps

    return np.round(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _check(photo: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    photo, heat = np.asarray(photo), np.asarray(heat)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(
            f"photo must be uint8 of shape (H, W, 3), received: {photo.dtype} {photo.shape}"
        )
    if heat.shape != photo.shape[:2]:
        raise ValueError(f"heat map shape {heat.shape} differs from the photo's {photo.shape[:2]}")
    return photo, np.clip(np.nan_to_num(heat.astype(np.float32)), 0, 1)


def overlay(photo: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The photo tinted by the heat map's colours, more strongly where the heat is higher.

    Each pixel is ``(1 - a) * photo + a * colour(heat)`` with ``a = alpha * heat``, so cold
    regions show the photo unchanged and the hottest ones are ``alpha`` colour.

    Args:
        photo: uint8 ``(H, W, 3)`` RGB.
        heat: ``(H, W)`` values in [0, 1] (clipped).
        alpha: the opacity of the colour at heat 1.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    photo, heat = _check(photo, heat)
    colours = colormap_table()[np.round(heat * 255).astype(np.intp)]
    a = (alpha * heat)[..., None]
    return np.round((1 - a) * photo + a * colours).astype(np.uint8)


def render(
    photo: np.ndarray, heat: np.ndarray, caption: str | None = None, panel: int | None = None
) -> Image.Image:
    """The photo and its overlay side by side, with an optional caption strip below.

    Args:
        photo, heat: as for :func:`overlay`.
        caption: text under the panels (e.g. the class and its probability); ``\n`` starts
            a new line.
        panel: height in pixels of each panel (both panels resized bilinearly, aspect kept);
            default the photo's own size.
    """
    photo, heat = _check(photo, heat)
    left, right = Image.fromarray(photo), Image.fromarray(overlay(photo, heat))
    if panel is not None and panel != photo.shape[0]:
        size = (max(1, round(photo.shape[1] * panel / photo.shape[0])), panel)
        left, right = (im.resize(size, Image.Resampling.BILINEAR) for im in (left, right))
    width, height = left.size
    strip = 2 + CAPTION_LINE * len(caption.split("\n")) if caption else 0
    canvas = Image.new("RGB", (2 * width, height + strip), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (width, 0))
    if caption:
        ImageDraw.Draw(canvas).multiline_text(
            (3, height + 2),
            caption,
            fill="black",
            font=ImageFont.load_default(size=11),
            spacing=CAPTION_LINE - 11,
        )
    return canvas


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """PNG encoding of a Pillow image or a uint8 ``(H, W, 3)`` array."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_png(path: str | Path, image: Image.Image | np.ndarray) -> Path:
    """Write ``image`` as a PNG file atomically (never half-written)."""
    return atomic_write(path, png_bytes(image))

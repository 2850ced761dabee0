"""Accepted uploads kept by content: ``DIR/<sha256>.<ext>``, ``DIR/thumbnails/<sha256>.jpg``.

The thumbnail is the image the model saw (decoded and resized to the model's size), as a JPEG.
Files are written atomically and never rewritten: the same photo sent twice is stored once.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from purenn.io import atomic_write

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

# Pillow format name -> file extension; anything else is kept as ".img".
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
               "TIFF": ".tif"}  # fmt: skip


def image_extension(data: bytes) -> str:
    """The file extension of an image's format (read from its header only)."""
    with Image.open(io.BytesIO(data)) as im:
        return _EXTENSIONS.get(im.format or "", ".img")


class ImageStore:
    """Keeps uploads and their thumbnails in ``root`` (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.thumbnails = self.root / "thumbnails"
        self.thumbnails.mkdir(parents=True, exist_ok=True)

    def save(self, sha256: str, data: bytes, model_input: np.ndarray) -> Path:
        """Store ``data`` and the thumbnail of ``model_input`` (uint8 ``(3, S, S)``).

        Returns:
            the stored image's path.
        """
        path = self.root / f"{sha256}{image_extension(data)}"
        if not path.exists():
            atomic_write(path, data)
        thumb = self.thumbnail_path(sha256)
        if not thumb.exists():
            buffer = io.BytesIO()
            Image.fromarray(model_input.transpose(1, 2, 0)).save(buffer, "JPEG", quality=85)
            atomic_write(thumb, buffer.getvalue())
        return path

    def thumbnail_path(self, sha256: str) -> Path:
        if not SHA256_PATTERN.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.thumbnails / f"{sha256}.jpg"

"""Fixtures for the data-pipeline tests: small image folders written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, pixels: np.ndarray, **save_kwargs) -> Path:
    """Save an (H, W, 3) or (H, W) uint8 array; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_kwargs)
    return path


def random_pixels(seed: int, height: int = 20, width: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def image_writer():
    """``write(path, pixels, **save_kwargs)``: save an image, creating parent folders."""
    return write_image


@pytest.fixture
def pixels():
    """``pixels(seed, height=20, width=20)``: a random (H, W, 3) uint8 array."""
    return random_pixels


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``data/<class>/<file>``: 3 classes of 4, 5 and 6 random 20x20 PNGs, odd names."""
    root = tmp_path / "data"
    classes = ["cat (tabby), α", "dog", "zebra crossing"]
    for c, name in enumerate(classes):
        for i in range(4 + c):
            write_image(root / name / f"img {i}, ü.png", random_pixels(100 * c + i))
    return root

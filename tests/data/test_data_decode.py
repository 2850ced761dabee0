"""Decoding one file: modes, EXIF orientation, formats, the resize filter, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from purenn.data import DataError, load_image


def halves(height: int, width: int, left, right) -> np.ndarray:
    """(H, W, 3) uint8: the left half one colour, the right half another."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = left
    image[:, width // 2 :] = right
    return image


def test_rgb_png_is_exact_at_its_own_size(tmp_path, image_writer, pixels):
    rgb = pixels(3, 16, 16)
    out = load_image(image_writer(tmp_path / "a.png", rgb), 16)
    assert out.dtype == np.uint8 and out.shape == (3, 16, 16)
    np.testing.assert_array_equal(out, rgb.transpose(2, 0, 1))


def test_grayscale_becomes_three_equal_channels(tmp_path, image_writer, pixels):
    grey = pixels(4, 16, 16)[..., 0]
    out = load_image(image_writer(tmp_path / "g.png", grey), 16)
    for channel in out:
        np.testing.assert_array_equal(channel, grey)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=np.uint16).repeat(8, 0).repeat(2, 1)
    path = tmp_path / "g16.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, 8)
    np.testing.assert_array_equal(out[0, 0, ::2], [0, 10, 128, 255])


def test_palette_image(tmp_path, pixels):
    rgb = pixels(5, 16, 16)
    path = tmp_path / "p.png"
    Image.fromarray(rgb).quantize(16).save(path)
    expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(load_image(path, 16), expected)


def test_rgba_is_composited_over_black(tmp_path, image_writer):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :8, 3] = 255  # opaque left half
    rgba[:, 8:, 3] = 0  # transparent right half
    out = load_image(image_writer(tmp_path / "a.png", rgba), 16)
    np.testing.assert_array_equal(
        out[:, :, :8], np.broadcast_to([[[200]], [[100]], [[50]]], (3, 16, 8))
    )
    assert (out[:, :, 8:] == 0).all()


def test_palette_transparency_is_composited(tmp_path):
    image = Image.new("P", (16, 16), 1)
    image.putpalette([255, 255, 255, 0, 200, 0] + [0] * 762)
    image.paste(0, (0, 0, 8, 16))  # left half palette index 0, declared transparent
    image.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png", 16)
    assert (out[:, :, :8] == 0).all()
    np.testing.assert_array_equal(out[:, 0, 8], [0, 200, 0])


def test_cmyk_jpeg(tmp_path):
    red = Image.new("RGB", (24, 24), (255, 0, 0)).convert("CMYK")
    red.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg", 8).astype(int)
    assert (np.abs(out - np.array([255, 0, 0]).reshape(3, 1, 1)) <= 8).all()


def test_exif_orientation_is_applied(tmp_path):
    # Stored 32 wide x 16 high, red left and blue right, with "rotate 90 degrees clockwise to
    # display" (orientation 6): shown upright, red is on top and blue at the bottom.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(halves(16, 32, (255, 0, 0), (0, 0, 255))).save(
        tmp_path / "r.jpg", exif=exif, quality=95
    )
    out = load_image(tmp_path / "r.jpg", 16).astype(int)
    assert out[0, :6].mean() > 200 and out[2, :6].mean() < 50  # top rows red
    assert out[2, -6:].mean() > 200 and out[0, -6:].mean() < 50  # bottom rows blue


def test_non_square_is_resized_to_square(tmp_path, image_writer):
    path = image_writer(tmp_path / "w.png", halves(20, 40, (255, 0, 0), (0, 255, 0)))
    out = load_image(path, 10)
    assert out.shape == (3, 10, 10)
    assert (out[0, :, :4] == 255).all() and (out[1, :, -4:] == 255).all()


def test_resize_is_antialiased(tmp_path, image_writer):
    # A one-pixel checkerboard shrunk 4x must average to grey; point sampling gives 0 or 255.
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    out = load_image(image_writer(tmp_path / "c.png", board), 8).astype(int)
    assert np.abs(out - 127.5).max() <= 4


def test_jpeg_draft_decode_is_close_to_full_decode(tmp_path, image_writer):
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    path = image_writer(tmp_path / "s.jpg", smooth, quality=95)
    full = Image.open(path).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
    diff = load_image(path, 16).astype(int) - np.asarray(full).transpose(2, 0, 1)
    assert np.abs(diff).mean() < 2 and np.abs(diff).max() < 12


@pytest.mark.parametrize("name", ["a.bmp", "a.webp", "a.jpeg", "A.JPG", "a.PNG"])
def test_formats(tmp_path, image_writer, pixels, name):
    out = load_image(image_writer(tmp_path / name, pixels(1, 24, 24)), 12)
    assert out.shape == (3, 12, 12) and out.dtype == np.uint8


@pytest.mark.parametrize("size", [7, 0, -3, 12.0, True])
def test_image_size_below_8_or_not_an_integer(tmp_path, image_writer, pixels, size):
    path = image_writer(tmp_path / "a.png", pixels(0))
    with pytest.raises(DataError, match=f"image_size={size!r}"):
        load_image(path, size)
    assert load_image(path, 8).shape == (3, 8, 8)


def test_unreadable_files_name_the_file(tmp_path, image_writer, pixels):
    good = image_writer(tmp_path / "good.jpg", pixels(0, 64, 64)).read_bytes()
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, not an image\n", "UnidentifiedImageError"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=f"{name}.*{reason}"):
            load_image(tmp_path / name, 16)
    with pytest.raises(DataError, match="missing.png.*FileNotFoundError"):
        load_image(tmp_path / "missing.png", 16)

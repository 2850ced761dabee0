"""Decode one image file into a uint8 CHW array of a fixed square size (the only Pillow use)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from purenn.checks import check_int
from purenn.data.errors import DataError

MIN_IMAGE_SIZE = 8

# Limits for untrusted uploads (decode_image_bytes): 50 megapixels covers a 48 MP phone photo
# (8000 x 6000); no side above 20,000 pixels.
MAX_UPLOAD_PIXELS = 50_000_000
MAX_SIDE = 20_000

# Pillow modes holding 16-bit (or wider) grey levels; Image.convert would clip them at 255.
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is an integer >= 8, else raise DataError naming the value."""
    return check_int(image_size, "image_size", MIN_IMAGE_SIZE, DataError)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB.

    Transparent pixels are composited over black (RGB premultiplied by alpha), the background of
    the "segmented" PlantVillage images. 16-bit grey is scaled to 8 bits (v * 255 / 65535).
    Grey, palette, CMYK and YCbCr use Pillow's conversions.
    """
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if im.mode in _WIDE_GREY_MODES:
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        return Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """Decode and resize one file; Pillow's exceptions propagate (see ``load_image``).

    Steps: for JPEG, ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT-domain
    downscaling, never below ``image_size``): faster, and pixels differ slightly (by a few
    levels) from a full decode followed by the resize. Then the EXIF orientation is applied,
    the mode converted to RGB and the image resized to ``image_size x image_size`` (aspect ratio
    not kept) with Pillow's BILINEAR filter, which widens its support by the scale factor when
    downscaling, i.e. an antialiasing triangle filter (as torchvision ``Resize(antialias=True)``).

    Returns:
        uint8 array of shape ``(3, image_size, image_size)``.
    """
    with Image.open(path) as im:
        return _decode_opened(im, image_size)


def _decode_opened(im: Image.Image, image_size: int) -> np.ndarray:
    """The pixels of an opened (not yet loaded) image, prepared as :func:`decode_image` says."""
    im.draft("RGB", (image_size, image_size))
    return square_chw(_to_rgb(ImageOps.exif_transpose(im)), image_size)


def square_chw(rgb: Image.Image, image_size: int) -> np.ndarray:
    """An RGB Pillow image resized as training saw it: uint8 ``(3, image_size, image_size)``."""
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1))


def decode_image_bytes(
    data: bytes, image_size: int, max_pixels: int = MAX_UPLOAD_PIXELS, max_side: int = MAX_SIDE
) -> np.ndarray:
    """Decode an uploaded image held in memory exactly as :func:`decode_image` decodes a file.

    Untrusted bytes are checked before any pixel is decoded (see :func:`_open_upload`).

    Returns:
        uint8 array of shape ``(3, image_size, image_size)``, RGB.

    Raises:
        DataError: empty, not an image, damaged or truncated, or too large; the message says which.
    """
    with _open_upload(data, max_pixels, max_side) as im:
        return _decode_opened(im, image_size)


def decode_photo_bytes(
    data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS, max_side: int = MAX_SIDE
) -> np.ndarray:
    """An uploaded image at its own size, checked as :func:`decode_image_bytes` checks it.

    The EXIF orientation is applied and the mode converted to RGB as for training; nothing is
    resized (this is the photo an explanation overlay is drawn on).

    Returns:
        uint8 array of shape ``(H, W, 3)``, RGB.

    Raises:
        DataError: as :func:`decode_image_bytes`.
    """
    with _open_upload(data, max_pixels, max_side) as im:
        return np.asarray(_to_rgb(ImageOps.exif_transpose(im)))


@contextmanager
def _open_upload(data: bytes, max_pixels: int, max_side: int) -> Iterator[Image.Image]:
    """The opened (not yet decoded) upload; any failure in the ``with`` body is a DataError.

    ``Image.open`` only reads the header, so the width and height are known first, and an image
    above ``max_pixels`` pixels or ``max_side`` pixels on a side (a decompression bomb: a few KB
    of PNG can declare 50,000 x 50,000 pixels) is refused before its pixels are decoded. Pillow's
    own bomb check (``DecompressionBombError``, and ``DecompressionBombWarning`` where a server
    turned it into an error with ``warnings.filterwarnings``) is refused too, and a truncated
    file fails (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False).
    """
    if not data:
        raise DataError("empty upload (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels or max(width, height) > max_side:
                raise DataError(
                    f"image of {width}x{height} pixels is too large (limit: {max_pixels:,} "
                    f"pixels and {max_side:,} pixels on a side)"
                )
            yield im
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise DataError(f"image is too large (decompression bomb): {err}") from None
    except Image.UnidentifiedImageError:
        raise DataError("not an image (no image format recognised)") from None
    except Exception as err:  # Pillow plugins raise many types on damaged data, see try_decode
        raise DataError(f"damaged or truncated image: {type(err).__name__}: {err}") from None


def try_decode(path: str | Path, image_size: int) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` on success, ``(None, reason)`` if the file cannot be used.

    Any exception is a reason: Pillow's plugins raise OSError, ValueError, SyntaxError,
    struct.error, EOFError and more on malformed files, and one bad file must not stop a build.
    """
    try:
        if os.stat(path).st_size == 0:
            return None, "empty file (0 bytes)"
        return decode_image(path, image_size), None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


def load_image(path: str | Path, image_size: int = 128) -> np.ndarray:
    """Decode one image file exactly as the cache does (used by ``predict`` on single files).

    Returns:
        uint8 array of shape ``(3, image_size, image_size)``, RGB.

    Raises:
        DataError: the file cannot be read or decoded (names the file), or ``image_size`` < 8.
    """
    image, reason = try_decode(path, check_image_size(image_size))
    if image is None:
        raise DataError(f"cannot read image {path}: {reason}")
    return image

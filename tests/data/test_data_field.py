"""Field-photo augmentation: determinism, the shard contract, ranges, each operation's property,
and the leaf mask on real PlantVillage leaves and leafless backgrounds (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from purenn.data import FieldAugmentation
from purenn.data.field import (
    _dilate,
    _erode,
    _fill_holes,
    affine_grid,
    gaussian_blur,
    hsv_to_rgb,
    jitter_hsv,
    jpeg_round_trip,
    leaf_mask,
    resample,
    rgb_to_hsv,
    soft_mask,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PLANTVILLAGE = SHARED / "plantvillage"
BACKGROUNDS = SHARED / "ood" / "background"


def smooth_batch(n: int = 6, size: int = 24, dtype=np.float32, seed: int = 0) -> np.ndarray:
    """Images in [0.05, 0.95] with structure at several scales (a leaf-ish green blob)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    batch = 0.2 + 0.6 * rng.random((n, 3, 1, 1)) * np.sin(3 * x + 2 * y + rng.random((n, 1, 1, 1)))
    blob = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1)[None, None]
    batch = np.where(blob, np.array([0.2, 0.6, 0.15])[None, :, None, None], batch)
    return np.clip(batch + 0.05 * rng.random((n, 3, size, size)), 0.05, 0.95).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_in_place_shape_dtype_and_range(dtype):
    aug = FieldAugmentation()
    batch = smooth_batch(dtype=dtype)
    a = aug.apply(batch.copy(), np.random.default_rng(3))
    x = batch.copy()
    b = aug.apply(x, np.random.default_rng(3))
    assert b is x and b.dtype == dtype and b.shape == batch.shape
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    c = aug.apply(batch.copy(), np.random.default_rng(4))
    assert not np.allclose(a, c)
    assert not np.allclose(a, batch, atol=0.02, rtol=0)


@pytest.mark.parametrize("piece", [*FieldAugmentation.PIECES, None])
def test_a_shard_equals_the_same_rows_of_the_whole_batch(piece):
    aug = FieldAugmentation() if piece is None else FieldAugmentation.only(piece)
    batch = smooth_batch(n=8, size=16)
    whole = aug.apply(batch.copy(), np.random.default_rng(11))
    keep = np.array([1, 4, 5, 7])
    shard = aug.apply(batch[keep].copy(), np.random.default_rng(11), draws=8, keep=keep)
    np.testing.assert_allclose(shard, whole[keep], atol=1e-6, rtol=0)


@pytest.mark.parametrize("piece", FieldAugmentation.PIECES)
def test_each_piece_alone_changes_the_images_and_none_changes_nothing(piece):
    batch = smooth_batch(n=16)
    out = FieldAugmentation.only(piece).apply(batch.copy(), np.random.default_rng(0))
    assert not np.allclose(out, batch, atol=1e-3, rtol=0)
    assert not FieldAugmentation.none().enabled and FieldAugmentation.only(piece).enabled
    np.testing.assert_array_equal(
        FieldAugmentation.none().apply(batch.copy(), np.random.default_rng(0)), batch
    )


def test_rgb_hsv_round_trip_and_known_colours():
    rgb = np.random.default_rng(0).random((4, 3, 16, 16))
    rgb[0, :, 0, 0] = (0.5, 0.5, 0.5)  # grey: no hue, no saturation
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-6, rtol=0)
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5]], float)
    hsv = rgb_to_hsv(colours.T[None, :, :, None])[0, :, :, 0].T
    np.testing.assert_allclose(hsv[:, 0], [0, 1 / 3, 2 / 3, 1 / 6, 0], atol=1e-12)
    np.testing.assert_allclose(hsv[:, 1], [1, 1, 1, 1, 0])
    np.testing.assert_allclose(hsv[:, 2], [1, 1, 1, 1, 0.5])


def test_hsv_jitter_identities_and_shifts():
    batch = np.random.default_rng(1).random((3, 3, 8, 8))
    zero = np.zeros(3)
    np.testing.assert_allclose(jitter_hsv(batch.copy(), zero, None, None), batch, atol=1e-6)
    np.testing.assert_allclose(jitter_hsv(batch.copy(), None, np.ones(3), None), batch, atol=1e-12)
    # A third of the circle maps red to green to blue: a cyclic shift of the channels.
    np.testing.assert_allclose(
        jitter_hsv(batch.copy(), np.full(3, 1 / 3), None, None), batch[:, [2, 0, 1]], atol=1e-6
    )
    # Saturation scaling in RGB is the HSV definition: s multiplied, clipped at 1; h, v kept.
    factors = np.array([0.5, 1.3, 3.0])
    out = jitter_hsv(batch.copy(), None, factors, None)
    before, after = rgb_to_hsv(batch), rgb_to_hsv(out)
    np.testing.assert_allclose(after[:, 2], before[:, 2], atol=1e-12)
    expected = np.clip(before[:, 1] * factors[:, None, None], 0, 1)
    np.testing.assert_allclose(after[:, 1], expected, atol=1e-9)
    np.testing.assert_allclose(after[0, 0], before[0, 0], atol=1e-9)


def test_identity_window_full_turn_and_quarter_turn():
    batch = smooth_batch(n=3, size=20, dtype=np.float64)
    n, size = 3, 20
    centre = (np.full(n, (size - 1) / 2), np.full(n, (size - 1) / 2))
    ones = (np.ones(n), np.ones(n))
    for degrees in (0.0, 360.0):
        out = resample(batch, *affine_grid(size, size, centre, ones, np.full(n, degrees)))
        np.testing.assert_allclose(out, batch, atol=1e-9)
    turned = resample(batch, *affine_grid(size, size, centre, ones, np.full(n, 90.0)))
    np.testing.assert_allclose(turned, np.rot90(batch, -1, axes=(2, 3)), atol=1e-9)
    mirrored = resample(batch, *affine_grid(size, size, centre, (-ones[0], ones[1]), np.zeros(n)))
    np.testing.assert_array_equal(mirrored, batch[..., ::-1])


def test_crop_at_scale_1_ratio_1_is_the_identity():
    batch = smooth_batch(n=5)
    aug = FieldAugmentation.only("crop", crop=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    np.testing.assert_allclose(aug.apply(batch.copy(), np.random.default_rng(0)), batch, atol=1e-6)


def test_crop_zooms_in_and_the_reflected_fill_is_not_black():
    batch = smooth_batch(n=8)
    zoomed = FieldAugmentation.only("crop", crop=(0.25, 0.25), crop_ratio=(1.0, 1.0)).apply(
        batch.copy(), np.random.default_rng(0)
    )
    # A quarter of the area, magnified 2x: neighbouring pixels differ less than in the original.
    assert np.abs(np.diff(zoomed, axis=3)).mean() < 0.7 * np.abs(np.diff(batch, axis=3)).mean()
    turned = FieldAugmentation.only("rotate", rotate=45.0).apply(
        batch.copy(), np.random.default_rng(1)
    )
    assert turned[:, :, :2, :2].min() >= 0.05 - 1e-6  # corners reflected, never black


def test_blur_keeps_constant_images_and_the_mean_and_matches_a_direct_convolution():
    constant = np.full((2, 3, 12, 12), 0.37)
    np.testing.assert_allclose(gaussian_blur(constant, np.array([0.5, 2.0]), 6), constant)
    batch = np.random.default_rng(2).random((2, 3, 12, 12))
    sigma = np.array([0.8, 1.7])
    out = gaussian_blur(batch, sigma, 4)
    offsets = np.arange(-4, 5)
    for i in range(2):
        k = np.exp(-0.5 * (offsets / sigma[i]) ** 2)
        k /= k.sum()
        padded = np.pad(batch[i], ((0, 0), (4, 4), (4, 4)), mode="reflect")
        direct = sum(
            k[a] * k[b] * padded[:, a : a + 12, b : b + 12] for a in range(9) for b in range(9)
        )
        np.testing.assert_allclose(out[i], direct, atol=1e-12)
    assert np.abs(np.diff(out, axis=3)).mean() < np.abs(np.diff(batch, axis=3)).mean()


def test_noise_strength_follows_its_parameter():
    batch = np.full((64, 3, 16, 16), 0.5, np.float32)
    out = FieldAugmentation.only("noise", noise=0.1).apply(batch.copy(), np.random.default_rng(0))
    spread = (out - 0.5).std(axis=(1, 2, 3))
    assert 0 < spread.min() < 0.02 and 0.08 < spread.max() < 0.11


def test_jpeg_round_trip_loses_more_at_low_quality():
    y, x = np.mgrid[0:32, 0:32] / 32
    image = np.stack([0.2 + 0.5 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * x * y]).astype(np.float32)
    image[:, 10:20, 12:22] = 0.8  # an edge for the low qualities to ring at
    errors = [np.abs(jpeg_round_trip(image[None], [q])[0] - image).mean() for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02
    assert jpeg_round_trip(image[None], [50]).dtype == np.float32


def test_background_replaces_around_the_leaf_and_keeps_the_leaf():
    size = 32
    batch = np.full((6, 3, size, size), 0.6, np.float32)  # grey lab background
    y, x = np.mgrid[0:size, 0:size]
    leaf = (x - 16) ** 2 / 100 + (y - 16) ** 2 / 40 < 1
    batch[:, :, leaf] = np.array([0.25, 0.55, 0.15], np.float32)[:, None]
    mask = leaf_mask(batch)
    assert (mask == leaf[None]).mean() > 0.97
    out = FieldAugmentation.only("background", background=1.0).apply(
        batch.copy(), np.random.default_rng(0)
    )
    inner = leaf & (np.abs(x - 16) < 6) & (np.abs(y - 16) < 3)
    np.testing.assert_allclose(out[:, :, inner], batch[:, :, inner], atol=1e-6)
    grey = np.abs(out[:, :, ~leaf] - 0.6).max(axis=1) < 0.01
    assert grey.mean() < 0.2  # the grey is gone (textures may pass through it now and then)


def test_background_photos_from_a_folder(tmp_path):
    folder = tmp_path / "backgrounds"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), (200, 30, 30), np.uint8)).save(folder / "red.png")
    batch = np.full((8, 3, 16, 16), 0.6, np.float32)
    aug = FieldAugmentation.only("background", background=1.0, background_dir=str(folder))
    out = aug.apply(batch, np.random.default_rng(0))
    red = np.all(np.abs(out[:, :, 0, 0] - np.array([200, 30, 30]) / 255) < 0.01, axis=1)
    assert 0 < red.sum() < 8  # the photo is one of four kinds


@pytest.mark.parametrize(
    "bad",
    [
        {"crop": (0.5, 0.2)},
        {"rotate": 200.0},
        {"background": 1.5},
        {"hue": 0.7},
        {"saturation": 1.0},
        {"blur": -1.0},
        {"noise": 0.9},
        {"jpeg": (0, 90)},
        {"background_dir": "/no/such/folder"},
    ],
)
def test_bad_settings_name_the_argument(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"{name} must be"):
        FieldAugmentation(**bad)


def test_bad_batches_and_pieces():
    with pytest.raises(ValueError, match="batch must be float of shape"):
        FieldAugmentation().apply(np.zeros((2, 1, 8, 8), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="piece must be"):
        FieldAugmentation.only("sharpen")


def _load(files: list[Path], size: int = 128) -> np.ndarray:
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
    return (np.stack(images).transpose(0, 3, 1, 2) / 255).astype(np.float32)


def _sliding_boxes(mask: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, size, size): each pixel's box, the edges replicated (the definition)."""
    half = size // 2
    padded = np.pad(mask, ((0, 0), (half, half), (half, half)), mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))


@pytest.mark.parametrize("shape", [(2, 9, 13), (1, 24, 24), (3, 7, 30)])
def test_box_filters_and_hole_filling_match_their_definitions(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.05, 0.5, 0.9):
        mask = rng.random(shape) < density
        for size in (3, 7):
            boxes = _sliding_boxes(mask, size)
            np.testing.assert_array_equal(_erode(mask, size), boxes.all(axis=(3, 4)))
            np.testing.assert_array_equal(_dilate(mask, size), boxes.any(axis=(3, 4)))
        box_mean = _sliding_boxes(mask.astype(np.float64), 3).mean(axis=(3, 4))
        np.testing.assert_allclose(soft_mask(mask), box_mean, atol=1e-6)
        # A pixel is filled when some mask pixel is at or before it, and at or after it, along
        # its row and along its column.
        seen = []
        for axis in (1, 2):
            seen.append(np.maximum.accumulate(mask, axis=axis))
            seen.append(np.flip(np.maximum.accumulate(np.flip(mask, axis), axis=axis), axis))
        np.testing.assert_array_equal(_fill_holes(mask), mask | np.logical_and.reduce(seen))


@pytest.mark.skipif(not PLANTVILLAGE.is_dir(), reason=f"no real images at {PLANTVILLAGE}")
def test_leaf_mask_covers_the_leaf_on_real_plantvillage_images():
    files = sorted(PLANTVILLAGE.glob("*/*.jpg"))[::25]  # 99 images of all 15 classes
    coverage = leaf_mask(_load(files)).mean(axis=(1, 2))
    assert ((coverage > 0.15) & (coverage < 0.85)).mean() > 0.8
    assert np.median(coverage) > 0.3


@pytest.mark.skipif(not BACKGROUNDS.is_dir(), reason=f"no leafless images at {BACKGROUNDS}")
def test_leaf_mask_is_mostly_empty_on_leafless_scenes():
    files = sorted(BACKGROUNDS.glob("*.jpg"))[:40]
    coverage = leaf_mask(_load(files)).mean(axis=(1, 2))
    assert np.median(coverage) < 0.05 and (coverage < 0.15).mean() > 0.7


def test_background_uses_the_given_leaf_alpha_instead_of_looking_for_the_leaf():
    # All green: leaf_mask would call the whole image leaf and replace nothing.
    batch = np.zeros((2, 3, 24, 24), np.float32)
    batch[:, 1] = 0.7
    alpha = np.zeros((2, 24, 24), np.float32)
    alpha[:, 8:16, 8:16] = 1
    recipe = FieldAugmentation.only("background", background=1.0)
    replaced = recipe.apply(batch.copy(), np.random.default_rng(0), alpha=alpha)
    np.testing.assert_array_equal(replaced[:, :, 8:16, 8:16], batch[:, :, 8:16, 8:16])
    assert (np.abs(replaced - batch).sum(axis=1)[:, alpha[0] == 0] > 0).mean() > 0.9
    unchanged = recipe.apply(batch.copy(), np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged, batch)
    with pytest.raises(
        ValueError, match=r"alpha must have shape \(2, 24, 24\), received: \(2, 24\)"
    ):
        recipe.apply(batch.copy(), np.random.default_rng(0), alpha=alpha[:, 0])

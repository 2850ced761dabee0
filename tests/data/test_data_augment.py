"""Augmentation properties: identities, ranges, per-image randomness, vectorisation."""

from __future__ import annotations

import numpy as np
import pytest

from purenn.data import Augmentation


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32)


def test_flipping_twice_is_the_identity(batch):
    flip = Augmentation(hflip=True, rotate=False, brightness=0, contrast=0)
    once = flip.apply(batch.copy(), np.random.default_rng(1))
    flipped = (once != batch).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(once[flipped], batch[flipped][..., ::-1])
    assert 16 < flipped.sum() < 48  # p = 0.5 per image
    twice = flip.apply(once, np.random.default_rng(1))  # same draws: the same images flip back
    np.testing.assert_array_equal(twice, batch)


def test_rotating_four_times_is_the_identity(batch):
    rotate = Augmentation(hflip=False, rotate=True, brightness=0, contrast=0)
    x = batch.copy()
    for _ in range(4):
        x = rotate.apply(x, np.random.default_rng(2))
    np.testing.assert_array_equal(x, batch)


def test_rotation_matches_per_image_rot90(batch):
    out = Augmentation(hflip=False, rotate=True, brightness=0, contrast=0).apply(
        batch.copy(), np.random.default_rng(5)
    )
    turns = []
    for image, result in zip(batch, out, strict=True):
        matches = [k for k in range(4) if np.array_equal(np.rot90(image, k, axes=(1, 2)), result)]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["brightness", "contrast"])
def test_photometric_changes_stay_in_range(kind):
    batch = np.random.default_rng(1).random((200, 3, 8, 8), dtype=np.float32)
    batch[:50] = 1.0  # saturated images must clip, not exceed 1
    batch[50:100] = 0.0
    aug = Augmentation(hflip=False, rotate=False, **{"brightness": 0, "contrast": 0, kind: 0.5})
    out = aug.apply(batch.copy(), np.random.default_rng(0))
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out[100:], batch[100:])


def test_brightness_factor_within_bounds():
    batch = np.full((500, 3, 4, 4), 0.5, dtype=np.float32)
    out = Augmentation(hflip=False, rotate=False, brightness=0.2, contrast=0).apply(
        batch, np.random.default_rng(0)
    )
    factors = out[:, 0, 0, 0] / 0.5
    np.testing.assert_allclose(
        out, np.broadcast_to(factors[:, None, None, None] * 0.5, out.shape), rtol=1e-6
    )
    assert 0.8 <= factors.min() < 0.82 and 1.18 < factors.max() <= 1.2


def test_contrast_keeps_the_image_mean_and_scales_deviations():
    rng = np.random.default_rng(3)
    batch = (0.4 + 0.2 * rng.random((300, 3, 6, 6))).astype(np.float32)  # no clipping possible
    out = Augmentation(hflip=False, rotate=False, brightness=0, contrast=0.2).apply(
        batch.copy(), rng
    )
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), batch.mean(axis=(1, 2, 3)), atol=1e-6)
    ratio = out.std(axis=(1, 2, 3)) / batch.std(axis=(1, 2, 3))
    assert 0.8 - 1e-4 <= ratio.min() < 0.83 and 1.17 < ratio.max() <= 1.2 + 1e-4


def test_same_rng_state_same_result_and_in_place(batch):
    aug = Augmentation()
    a = aug.apply(batch.copy(), np.random.default_rng(9))
    x = batch.copy()
    b = aug.apply(x, np.random.default_rng(9))
    assert b is x
    np.testing.assert_array_equal(a, b)


def test_none_changes_nothing(batch):
    assert not Augmentation.none().enabled and Augmentation().enabled
    np.testing.assert_array_equal(
        Augmentation.none().apply(batch.copy(), np.random.default_rng(0)), batch
    )


def test_rotation_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        Augmentation().apply(np.zeros((2, 3, 4, 6), np.float32), np.random.default_rng(0))
    out = Augmentation(rotate=False).apply(
        np.zeros((2, 3, 4, 6), np.float32), np.random.default_rng(0)
    )
    assert out.shape == (2, 3, 4, 6)


@pytest.mark.parametrize("bad", [{"brightness": 1.0}, {"contrast": -0.1}])
def test_bad_strengths(bad):
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=f"{name}={value}"):
        Augmentation(**bad)

"""Channel statistics and the z-score normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from purenn.data import channel_stats, normalize_batch


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 6, 6), dtype=np.uint8)
    x[:, 1] //= 4  # channels with different statistics
    return x


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_matches_float64_reference_on_the_given_indices_only(images, chunk):
    indices = np.array([40, 3, 17, 5, 22, 9])
    mean, std = channel_stats(images, indices, chunk=chunk)
    reference = images[indices].astype(np.float64) / 255
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (3,)
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(std, reference.std(axis=(0, 2, 3)), rtol=1e-12)
    assert not np.allclose(mean, images.astype(np.float64).mean(axis=(0, 2, 3)) / 255, rtol=1e-3)


def test_exact_for_a_constant_channel(images):
    images[:, 2] = 77
    mean, std = channel_stats(images, np.arange(50))
    assert mean[2] == 77 / 255 and std[2] == 0.0


def test_works_on_a_memmap(images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for a, b in zip(
        channel_stats(mapped, np.arange(50)), channel_stats(images, np.arange(50)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_empty_indices_rejected(images):
    with pytest.raises(ValueError, match="indices"):
        channel_stats(images, np.array([], dtype=np.int64))


def test_normalize_batch_uint8_and_float_agree(images):
    mean, std = np.array([0.5, 0.1, 0.4]), np.array([0.2, 0.05, 0.3])
    out = normalize_batch(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    expected = (images / 255 - mean.reshape(3, 1, 1)) / std.reshape(3, 1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize_batch(images / 255, mean, std), out, rtol=1e-5, atol=1e-5)
    single = normalize_batch(images[0], mean, std)  # one (C, H, W) image, as in predict
    np.testing.assert_array_equal(single, out[0])


def test_normalize_batch_without_stats_only_scales(images):
    out = normalize_batch(images, None, None)
    np.testing.assert_allclose(out, images / 255, rtol=1e-6)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        (np.zeros(3), None, "together"),
        (np.zeros(2), np.ones(2), "mean must be 3"),
        (np.zeros(3), np.array([1.0, 0.0, 1.0]), "std must be > 0"),
    ],
)
def test_normalize_batch_bad_stats(images, mean, std, message):
    with pytest.raises(ValueError, match=message):
        normalize_batch(images, mean, std)

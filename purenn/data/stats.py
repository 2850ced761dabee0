"""Per-channel statistics of the training images, and the z-score normalisation they feed."""

from __future__ import annotations

import numpy as np


def channel_stats(
    images: np.ndarray, indices: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel of ``images[indices] / 255``.

    Streams over the (memory-mapped) images ``chunk`` at a time. The accumulators are exact
    integers (sums of uint8 values and of their squares, at most 65025 each, in uint64), so the
    result is exact up to the final float64 division whatever the dataset size; the variance is
    ``(n * sum(v^2) - sum(v)^2) / n^2`` computed in Python integers, free of cancellation.

    Args:
        images: uint8 array of shape ``(N, C, H, W)``.
        indices: int array of the images to use (e.g. the training split), non-empty.
        chunk: images read per step; memory is about ``3 * chunk * C * H * W`` bytes.

    Returns:
        ``(mean, std)``: float64 arrays of shape ``(C,)``, population std (ddof 0), in [0, 1]
        units.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 of shape (N, C, H, W), received: {images.dtype} {images.shape}"
        )
    indices = np.sort(np.asarray(indices, dtype=np.int64))  # sorted: sequential memmap reads
    if indices.size == 0:
        raise ValueError("indices must not be empty, received: indices of size 0")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, received: chunk={chunk}")
    channels = images.shape[1]
    total = np.zeros(channels, dtype=np.uint64)
    total_sq = np.zeros(channels, dtype=np.uint64)
    for start in range(0, indices.size, chunk):
        x = images[indices[start : start + chunk]].astype(np.uint16)
        total += x.sum(axis=(0, 2, 3), dtype=np.uint64)
        total_sq += np.square(x, out=x).sum(axis=(0, 2, 3), dtype=np.uint64)
    n = indices.size * images.shape[2] * images.shape[3]
    mean = np.array([int(s) / n for s in total]) / 255.0
    var = np.array(
        [(n * int(q) - int(s) ** 2) / n**2 for s, q in zip(total, total_sq, strict=True)]
    )
    return mean, np.sqrt(var) / 255.0


def channel_columns(
    mean: np.ndarray | None, std: np.ndarray | None, channels: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Check normalisation statistics; float32 ``(C, 1, 1)`` columns of mean and 1/std.

    Returns None when both are None (no z-score). Raises ValueError naming the argument when
    only one is given, the length is not ``channels``, or a std is not > 0.
    """
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"mean and std must be given together, received: mean={mean}, std={std}")
    columns = []
    for name, values in (("mean", mean), ("std", std)):
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (channels,) or not np.isfinite(values).all():
            raise ValueError(
                f"{name} must be {channels} finite values, one per channel, "
                f"received: {name}={values}"
            )
        columns.append(values.reshape(channels, 1, 1))
    if not (columns[1] > 0).all():
        raise ValueError(f"std must be > 0 in every channel, received: std={std}")
    return columns[0], 1 / columns[1]


def standardize_(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """In place ``(x - mean) / std`` per channel of a float32 ``(..., C, H, W)`` array.

    With ``mean`` and ``std`` both None, ``x`` is returned unchanged.
    """
    columns = channel_columns(mean, std, x.shape[-3])
    if columns is not None:
        x -= columns[0]
        x *= columns[1]
    return x


def normalize_batch(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """Scale images to [0, 1] and z-score them per channel.

    Args:
        x: uint8 images (0..255) or float images already in [0, 1], shape ``(C, H, W)`` or
            ``(N, C, H, W)``.
        mean, std: per-channel statistics of shape ``(C,)`` in [0, 1] units (from
            ``channel_stats``), or both None to only scale.

    Returns:
        a new float32 array of the shape of ``x``.
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"x must have shape (C, H, W) or (N, C, H, W), received: {x.shape}")
    out = x.astype(np.float32)
    if x.dtype == np.uint8:
        out *= np.float32(1 / 255)
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be uint8 or float in [0, 1], received dtype {x.dtype}")
    return standardize_(out, mean, std)

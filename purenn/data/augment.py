"""Random augmentation of a whole float batch at once, driven by a NumPy Generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from purenn.checks import check_fraction


@dataclass(frozen=True)
class Augmentation:
    """Random flips, right-angle rotations, brightness and contrast, per image of a batch.

    Args:
        hflip: mirror left-right with probability 0.5.
        rotate: rotate by 0, 90, 180 or 270 degrees, each with probability 1/4 (square images).
        brightness: b; multiply the image by a factor drawn from U(1 - b, 1 + b); 0 disables.
        contrast: c; scale the image's deviation from its mean (over all channels and pixels)
            by a factor from U(1 - c, 1 + c); 0 disables.

    Applied in that order, each image with its own draws; one clip to [0, 1] at the end.
    """

    hflip: bool = True
    rotate: bool = True
    brightness: float = 0.2
    contrast: float = 0.2

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast"):
            check_fraction(getattr(self, name), name)

    @classmethod
    def none(cls) -> Augmentation:
        """An augmentation that changes nothing."""
        return cls(hflip=False, rotate=False, brightness=0.0, contrast=0.0)

    @property
    def enabled(self) -> bool:
        return self.hflip or self.rotate or self.brightness > 0 or self.contrast > 0

    @property
    def needs_square(self) -> bool:
        """Whether the images must be square (right-angle rotations)."""
        return self.rotate

    def apply(
        self,
        batch: np.ndarray,
        rng: np.random.Generator,
        draws: int | None = None,
        keep: np.ndarray | None = None,
    ) -> np.ndarray:
        """Augment ``batch`` in place and return it.

        Random numbers are drawn in a fixed order (flips, rotations, brightness, contrast; each
        only if enabled), one per image, so the result is a function of the rng state alone.

        Args:
            batch: float array of shape ``(N, C, H, W)`` with values in [0, 1]; H == W if
                ``rotate``.
            rng: the source of randomness.
            draws, keep: augment part of a larger batch exactly as the whole: the draws are
                made for ``draws`` images and ``batch[i]`` uses draw ``keep[i]`` (int array of
                length N). Default: ``draws = N`` and image i uses draw i.

        Returns:
            ``batch``, augmented and clipped to [0, 1].
        """
        if batch.ndim != 4:
            raise ValueError(f"batch must have shape (N, C, H, W), received: {batch.shape}")
        n = batch.shape[0] if draws is None else draws

        def mine(values: np.ndarray) -> np.ndarray:
            return values if keep is None else values[keep]

        if self.hflip:
            flip = np.flatnonzero(mine(rng.random(n)) < 0.5)
            batch[flip] = batch[flip, :, :, ::-1]
        if self.rotate:
            if batch.shape[2] != batch.shape[3]:
                raise ValueError(
                    f"rotation needs square images, received: batch of shape {batch.shape}"
                )
            quarter_turns = mine(rng.integers(0, 4, size=n))
            for k in (1, 2, 3):
                members = np.flatnonzero(quarter_turns == k)
                batch[members] = np.rot90(batch[members], k, axes=(2, 3))
        if self.brightness or self.contrast:
            # Both are affine per image, so they fuse into one pass: brightness b then contrast c
            # around the brightened mean b*m give b*(c*x + (1 - c)*m) = (b*c)*x + b*(1 - c)*m.
            b = mine(self._factors(rng, self.brightness, n, batch.dtype))
            c = mine(self._factors(rng, self.contrast, n, batch.dtype))
            shift = (
                b * (1 - c) * batch.mean(axis=(1, 2, 3), dtype=batch.dtype)
                if self.contrast
                else None
            )
            batch *= (b * c)[:, None, None, None]
            if shift is not None:
                batch += shift[:, None, None, None]
        return np.clip(batch, 0, 1, out=batch)

    @staticmethod
    def _factors(rng: np.random.Generator, spread: float, n: int, dtype: np.dtype) -> np.ndarray:
        """``n`` factors from U(1 - spread, 1 + spread); ones (and no draw) when spread is 0."""
        if not spread:
            return np.ones(n, dtype=dtype)
        return rng.uniform(1 - spread, 1 + spread, size=n).astype(dtype)

"""Small models shared by tests that train for a few seconds."""

from __future__ import annotations

import numpy as np

import purenn as pn


def two_conv_cnn(classes: int, size: int, rng: np.random.Generator) -> pn.Sequential:
    """conv(3->8) ReLU pool, conv(8->16) ReLU pool, Dense: for (N, 3, size, size) float32 images.

    ``size`` must be a multiple of 4; weights are drawn from ``rng`` in layer order.
    """
    return pn.Sequential(
        [
            pn.Conv2D(3, 8, 3, padding=1, rng=rng),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Conv2D(8, 16, 3, padding=1, rng=rng),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Flatten(),
            pn.Dense(16 * (size // 4) ** 2, classes, init="glorot", rng=rng),
        ],
        input_shape=(3, size, size),
    )

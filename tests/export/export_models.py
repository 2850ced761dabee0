"""Small models and metadata shared by the export tests (imported by the test modules)."""

from __future__ import annotations

import numpy as np

import purenn as pn

META = {
    "class_names": ["healthy", "rust", "scab"],
    "image_size": 8,
    "mean": [0.45, 0.5, 0.4],
    "std": [0.2, 0.15, 0.25],
}


def moved(model: pn.Sequential, seed: int = 1) -> pn.Sequential:
    """Move every parameter and buffer off its initial value, so that no mapping error hides
    behind ones, zeros or a weight norm equal to the weight's (running variances stay > 0)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        shifted = value + rng.normal(scale=0.2, size=value.shape).astype(value.dtype)
        state[key] = np.abs(shifted) + 0.1 if key.endswith(("running_var", "weight_g")) else shifted
    model.load_state_dict(state)
    return model.eval()


def every_layer_model() -> pn.Sequential:
    """One model holding every exportable layer type (Conv2D with weight norm and BatchNorm)."""
    rng = np.random.default_rng(0)
    return moved(
        pn.Sequential(
            [
                pn.Conv2D(3, 4, 3, padding=1, weight_norm=True, rng=rng),
                pn.BatchNorm2D(4),
                pn.ReLU(),
                pn.MaxPool2D(2),
                pn.Conv2D(4, 6, 2, padding="same", rng=rng),
                pn.LeakyReLU(0.2),
                pn.AvgPool2D(2, stride=1),
                pn.Tanh(),
                pn.Flatten(),
                pn.Dropout(0.3, rng=rng),
                pn.Dense(54, 8, weight_norm=True, rng=rng),
                pn.BatchNorm1D(8),
                pn.Sigmoid(),
                pn.Dense(8, 3, init="glorot", rng=rng),
            ],
            input_shape=(3, 8, 8),
        )
    )


def images(batch: int, shape=(3, 8, 8), seed: int = 3) -> np.ndarray:
    """Float32 images in [0, 1], like uint8 pixels divided by 255."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(batch, *shape)) / 255).astype(np.float32)

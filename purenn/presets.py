"""Named architectures: the PlantVillage reference CNN and ANN, and the small demo CNN.

Every preset takes the number of classes, the square image size and the input channels, and
a seed for its initial weights; hidden layers use He initialisation (they feed ReLU), the
classifier Glorot.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from purenn.checks import check_int
from purenn.nn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from purenn.nn.sequential import Sequential


def _conv_blocks(channels: list[int], rng, dtype, weight_norm: bool) -> list:
    """Conv2D 3x3 'same' -> ReLU -> MaxPool2D(2) for each consecutive pair of channel counts."""
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [
            Conv2D(c_in, c_out, 3, padding=1, weight_norm=weight_norm, rng=rng, dtype=dtype),
            ReLU(),
            MaxPool2D(2),
        ]
    return layers


def _check_divisible(image_size: int, factor: int, preset: str) -> None:
    if image_size % factor:
        raise ValueError(
            f"preset {preset!r} halves the image {int(np.log2(factor))} times, so image_size "
            f"must be a multiple of {factor}, received: image_size={image_size}"
        )


def plantvillage_cnn(num_classes, image_size, in_channels, rng, dtype, weight_norm=False):
    """The seed's CNN, 8,142,630 parameters for 38 classes at 128x128.

    Four blocks Conv2D 3x3 pad 1 (3->32->64->128->128) + ReLU + MaxPool2D(2); Flatten (8192);
    Dense(8192, 960); ReLU; Dropout(0.5); Dense(960, classes).
    """
    _check_divisible(image_size, 16, "plantvillage-cnn")
    flat = 128 * (image_size // 16) ** 2
    return _conv_blocks([in_channels, 32, 64, 128, 128], rng, dtype, weight_norm) + [
        Flatten(),
        Dense(flat, 960, weight_norm=weight_norm, rng=rng, dtype=dtype),
        ReLU(),
        Dropout(0.5, rng=rng),
        Dense(960, num_classes, init="glorot", weight_norm=weight_norm, rng=rng, dtype=dtype),
    ]


def plantvillage_ann(num_classes, image_size, in_channels, rng, dtype, weight_norm=False):
    """The seed's dense network, 26,126,006 parameters for 38 classes at 128x128.

    Flatten (49152); Dense 528, 256, 128 each with ReLU; Dense(128, classes).
    """
    widths = [in_channels * image_size * image_size, 528, 256, 128]
    layers: list = [Flatten()]
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [Dense(w_in, w_out, weight_norm=weight_norm, rng=rng, dtype=dtype), ReLU()]
    layers.append(
        Dense(128, num_classes, init="glorot", weight_norm=weight_norm, rng=rng, dtype=dtype)
    )
    return layers


def demo_cnn(num_classes, image_size, in_channels, rng, dtype, weight_norm=False):
    """A small CNN for the digits demo: two conv blocks (16, 32 channels), Dense 64, Dropout."""
    _check_divisible(image_size, 4, "demo-cnn")
    flat = 32 * (image_size // 4) ** 2
    return _conv_blocks([in_channels, 16, 32], rng, dtype, weight_norm) + [
        Flatten(),
        Dense(flat, 64, weight_norm=weight_norm, rng=rng, dtype=dtype),
        ReLU(),
        Dropout(0.25, rng=rng),
        Dense(64, num_classes, init="glorot", weight_norm=weight_norm, rng=rng, dtype=dtype),
    ]


PRESETS: dict[str, Callable] = {
    "plantvillage-cnn": plantvillage_cnn,
    "plantvillage-ann": plantvillage_ann,
    "demo-cnn": demo_cnn,
}


def build_preset(
    name: str,
    num_classes: int = 38,
    image_size: int = 128,
    in_channels: int = 3,
    seed: int | None = 0,
    dtype=np.float32,
    weight_norm: bool = False,
) -> Sequential:
    """Build the preset ``name`` for (in_channels, image_size, image_size) inputs.

    Raises:
        ValueError: for an unknown preset (listing the known ones) or bad sizes.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    num_classes = check_int(num_classes, "num_classes")
    image_size = check_int(image_size, "image_size")
    in_channels = check_int(in_channels, "in_channels")
    rng = np.random.default_rng(seed)
    layers = PRESETS[name](num_classes, image_size, in_channels, rng, dtype, weight_norm)
    return Sequential(layers, input_shape=(in_channels, image_size, image_size))

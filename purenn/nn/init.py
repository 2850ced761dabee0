"""Weight initialisers: He (Kaiming) for layers followed by ReLU, Glorot (Xavier) otherwise.

``fan_in`` and ``fan_out`` follow PyTorch: for a weight of shape (out, in, *kernel),
``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.
"""

from __future__ import annotations

import math

import numpy as np

INITIALIZERS = ("he", "glorot")


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel)."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """N(0, 2 / fan_in): keeps the activation variance constant through ReLU layers."""
    fan_in, _ = fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(
    shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float32
) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)): balances forward and backward variance."""
    fan_in, fan_out = fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def initialize(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float32
) -> np.ndarray:
    """Initialise a weight with the initialiser called ``name`` ("he" or "glorot")."""
    if name == "he":
        return he_normal(shape, rng, dtype)
    if name == "glorot":
        return glorot_uniform(shape, rng, dtype)
    raise ValueError(f"init must be one of {INITIALIZERS}, received: init={name!r}")

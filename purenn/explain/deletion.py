"""The deletion check of an explanation: does blanking the pixels it ranks highest hurt the class?

For each image, the ``fraction`` of pixels a heat map ranks highest are set to ``fill`` in every
channel (0 for z-scored inputs is the training set's mean colour), and so are as many pixels chosen
at random; a faithful map lowers the explained class's probability more than the random pixels do
(Samek et al. 2017 and Petsiuk et al. 2018 use the same idea with a growing fraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from purenn.explain.methods import ExplainError, isolated
from purenn.kernels.ops import softmax
from purenn.nn.sequential import Sequential


@dataclass(frozen=True)
class DeletionResult:
    """Per-image probabilities of the explained class, float64 ``(N,)`` each.

    Attributes:
        original: on the unchanged images.
        explained: with the pixels the maps rank highest blanked.
        random: with as many random pixels blanked.
    """

    original: np.ndarray
    explained: np.ndarray
    random: np.ndarray

    @property
    def explained_drop(self) -> np.ndarray:
        return self.original - self.explained

    @property
    def random_drop(self) -> np.ndarray:
        return self.original - self.random


def class_probabilities(model: Sequential, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """float64 ``(N, K)`` softmax of the model's logits in evaluation mode (model unchanged)."""
    outputs = []
    with isolated(model):
        for start in range(0, len(x), batch_size):
            outputs.append(model.forward(x[start : start + batch_size], training=False))
    return softmax(np.concatenate(outputs).astype(np.float64))


def top_pixels(maps: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """bool ``(N, H, W)``: the ``count`` highest pixels of each map, ties broken at random."""
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)
    mask = np.zeros((n, h * w), dtype=bool)
    for i in range(n):
        # lexsort sorts by the last key first: highest value, then a random order among ties.
        order = np.lexsort((rng.random(h * w), -flat[i]))
        mask[i, order[:count]] = True
    return mask.reshape(n, h, w)


def deletion_check(
    model: Sequential,
    images: np.ndarray,
    maps: np.ndarray,
    targets: np.ndarray,
    fraction: float = 0.2,
    fill: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
) -> DeletionResult:
    """Probabilities of ``targets`` before and after blanking the top pixels or random ones.

    Args:
        model: the model (left unchanged).
        images: float ``(N, C, H, W)`` as the model expects.
        maps: ``(N, H, W)`` heat maps (higher: more important).
        targets: int ``(N,)`` classes whose probability is compared.
        fraction: share of the pixels blanked, in (0, 1).
        fill: the value written into every channel of a blanked pixel.
        seed: seed of the random pixels and of the tie-breaking.
        batch_size: images per forward pass.
    """
    images, maps = np.asarray(images), np.asarray(maps)
    if maps.shape != images.shape[:1] + images.shape[2:]:
        raise ExplainError(
            f"maps must have shape {images.shape[:1] + images.shape[2:]}, received {maps.shape}"
        )
    if not 0 < fraction < 1:
        raise ExplainError(f"fraction must be in (0, 1), received: fraction={fraction!r}")
    rng = np.random.default_rng(seed)
    n, _, h, w = images.shape
    count = round(fraction * h * w)
    random_mask = np.zeros((n, h * w), dtype=bool)
    for i in range(n):
        random_mask[i, rng.choice(h * w, count, replace=False)] = True
    rows = np.arange(n)
    fill = images.dtype.type(fill)

    def probability_of_target(mask: np.ndarray | None) -> np.ndarray:
        x = images if mask is None else np.where(mask[:, None], fill, images)
        return class_probabilities(model, x, batch_size)[rows, targets]

    return DeletionResult(
        original=probability_of_target(None),
        explained=probability_of_target(top_pixels(maps, count, rng)),
        random=probability_of_target(random_mask.reshape(n, h, w)),
    )

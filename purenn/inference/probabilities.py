"""Class probabilities of prepared images: the one inference path of predict, serve and export.

It sits beside training, not inside it: a model file plus uint8 images (decoded and resized by
``purenn.data`` exactly as training did) give probabilities, without importing the fit loop.
"""

from __future__ import annotations

import numpy as np

from purenn.data import normalize_batch
from purenn.kernels.ops import softmax
from purenn.nn.sequential import Sequential

# What a model file must hold besides its weights to classify image files.
INFERENCE_KEYS = ("class_names", "image_size", "mean", "std")


def class_probabilities(model: Sequential, images: np.ndarray, meta: dict) -> np.ndarray:
    """Softmax probabilities of a batch.

    Args:
        model: a model in eval mode.
        images: uint8 array ``(N, 3, S, S)`` at the model's ``image_size``.
        meta: the model file's metadata (its ``mean`` and ``std`` normalise the images).

    Returns:
        float64 array ``(N, K)``, rows summing to 1 (logits upcast before the softmax).
    """
    x = normalize_batch(images, meta["mean"], meta["std"])
    return softmax(model.forward(x, training=False).astype(np.float64))


def top_classes(probabilities: np.ndarray, class_names: list[str], top_k: int) -> list[dict]:
    """``[{"class": name, "probability": p}, ...]`` for one row, best first (ties: lower index)."""
    best = np.argsort(-probabilities, kind="stable")[: min(top_k, len(class_names))]
    return [{"class": class_names[i], "probability": float(probabilities[i])} for i in best]

"""Class probabilities of prepared images: the one inference path of predict, serve and export.

It sits beside training, not inside it: a model file plus uint8 images (decoded and resized by
``purenn.data`` exactly as training did) give probabilities, without importing the fit loop.
The probabilities are calibrated: the logits are divided by the model file's ``temperature``
(:mod:`purenn.inference.calibration`; a file without one, written before it existed, has T = 1).
"""

from __future__ import annotations

import numpy as np

from purenn.data import normalize_batch
from purenn.inference.tta import tta_logits
from purenn.io.header import ModelFileError
from purenn.kernels.ops import softmax
from purenn.nn.sequential import Sequential

# What a model file must hold besides its weights to classify image files.
INFERENCE_KEYS = ("class_names", "image_size", "mean", "std")


def model_temperature(meta: dict) -> float:
    """The model file's calibration temperature (1.0 when it has none).

    Raises:
        ModelFileError: a temperature that is not a finite number > 0.
    """
    temperature = meta.get("temperature", 1.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 < temperature < np.inf
    ):
        raise ModelFileError(
            f"the model file's temperature must be a number > 0; received: {temperature!r}"
        )
    return float(temperature)


def calibrated_probabilities(logits: np.ndarray, meta: dict) -> np.ndarray:
    """float64 ``softmax(logits / T)`` of ``(N, K)`` logits, ``T`` the model file's temperature."""
    return softmax(np.asarray(logits, dtype=np.float64) / model_temperature(meta))


def class_probabilities(
    model: Sequential, images: np.ndarray, meta: dict, views: int = 1
) -> np.ndarray:
    """Calibrated softmax probabilities of a batch, optionally averaged over flipped views.

    Args:
        model: a model in eval mode.
        images: uint8 array ``(N, 3, S, S)`` at the model's ``image_size``.
        meta: the model file's metadata (its ``mean`` and ``std`` normalise the images, its
            ``temperature`` divides the logits).
        views: test-time augmentation: the mean of the calibrated probabilities of the first
            ``views`` views of :data:`purenn.inference.tta.VIEWS` (1: the image alone; each
            view is one more forward pass).

    Returns:
        float64 array ``(N, K)``, rows summing to 1 (logits upcast before the softmax).
    """
    x = normalize_batch(images, meta["mean"], meta["std"])
    logits = tta_logits(
        lambda batch: model.forward(batch, training=False), x, model_temperature(meta), views
    )
    return calibrated_probabilities(logits, meta)


def top_classes(probabilities: np.ndarray, class_names: list[str], top_k: int) -> list[dict]:
    """``[{"class": name, "probability": p}, ...]`` for one row, best first (ties: lower index)."""
    best = np.argsort(-probabilities, kind="stable")[: min(top_k, len(class_names))]
    return [{"class": class_names[i], "probability": float(probabilities[i])} for i in best]

"""Explain one decoded photo with a saved model: the overlay PNG and the class it explains.

This is the entry point for a server (``POST /api/explain``) or any caller holding a model loaded
with :func:`purenn.io.load_model` and a photo decoded to RGB pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from purenn.data import normalize_batch
from purenn.data.decode import square_chw
from purenn.explain.methods import ExplainError, explain, upsample
from purenn.explain.overlay import overlay, png_bytes
from purenn.inference.probabilities import model_temperature
from purenn.nn.sequential import Sequential

# What a model file must hold besides its weights to explain photos.
REQUIRED_METADATA = ("class_names", "image_size", "mean", "std")


@dataclass(frozen=True)
class PhotoExplanation:
    """What :func:`explain_photo` returns.

    Attributes:
        png: the overlay (the photo at its own size, tinted by the heat map) as PNG bytes.
        class_name, class_index: the class explained.
        probability: the model's calibrated probability of that class for the photo (as
            ``predict`` and ``serve`` report it).
        predicted: the class the model predicts (the explained one unless a target was given).
    """

    png: bytes
    class_name: str
    class_index: int
    probability: float
    predicted: str


def class_index(metadata: dict, target: int | str) -> int:
    """The index of a class given by name or index, checked against the model's class names.

    Raises:
        ExplainError: an unknown name or an index out of range (the message lists classes).
    """
    names = metadata["class_names"]
    if isinstance(target, str):
        if target not in names:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ExplainError(f"unknown class {target!r}; the model's classes: {shown}")
        return names.index(target)
    if isinstance(target, (int, np.integer)) and 0 <= target < len(names):
        return int(target)
    raise ExplainError(f"class must be a name or an index below {len(names)}, received: {target!r}")


def explain_photo(
    model: Sequential,
    metadata: dict,
    photo: np.ndarray,
    method: str = "gradcam",
    target: int | str | None = None,
    smooth_samples: int = 0,
    pixels: np.ndarray | None = None,
) -> PhotoExplanation:
    """Explain the model's decision on one photo.

    The photo is prepared exactly as training prepared images (resized to the model's square
    input with Pillow's bilinear filter, scaled to [0, 1], z-scored with the model's mean and
    std); the heat map is resized back to the photo's size and drawn over it.

    Args:
        model: loaded with ``load_model`` (left unchanged; not to be used by another thread
            meanwhile).
        metadata: the model file's metadata (needs ``class_names``, ``image_size``, ``mean``,
            ``std``).
        photo: uint8 ``(H, W, 3)`` RGB pixels.
        method: ``"gradcam"`` or ``"saliency"``.
        target: the class to explain (name or index); default the predicted class.
        smooth_samples: SmoothGrad samples for saliency (0: plain gradient).
        pixels: the model's input already prepared from this photo, uint8 ``(3, S, S)`` (e.g.
            by the decoder that served a prediction of it, which decodes a JPEG at reduced
            scale); default: the photo resized as above.

    Returns:
        A :class:`PhotoExplanation`.

    Raises:
        ExplainError: a bad photo, class or method, or metadata lacking a required key.
        ModelFileError: a bad ``temperature`` in the metadata.
    """
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ExplainError(f"the model's metadata lacks {missing}")
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3 or 0 in photo.shape:
        raise ExplainError(
            f"photo must be uint8 RGB of shape (H, W, 3), received: {photo.dtype} {photo.shape}"
        )
    target = None if target is None else class_index(metadata, target)
    size = metadata["image_size"]
    if pixels is None:
        pixels = square_chw(Image.fromarray(photo), size)
    elif (pixels := np.asarray(pixels)).dtype != np.uint8 or pixels.shape != (3, size, size):
        raise ExplainError(
            f"pixels must be uint8 of shape (3, {size}, {size}), received: "
            f"{pixels.dtype} {pixels.shape}"
        )
    x = normalize_batch(pixels[None], metadata["mean"], metadata["std"])
    result = explain(
        model,
        x,
        method,
        target,
        smooth_samples=smooth_samples,
        temperature=model_temperature(metadata),
    )
    heat = np.clip(upsample(result.maps, photo.shape[:2])[0], 0, 1)
    names, chosen = metadata["class_names"], int(result.targets[0])
    return PhotoExplanation(
        png=png_bytes(overlay(photo, heat)),
        class_name=names[chosen],
        class_index=chosen,
        probability=float(result.probabilities[0, chosen]),
        predicted=names[int(np.argmax(result.probabilities[0]))],
    )

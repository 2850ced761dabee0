"""Predict the classes of image files with a saved model: top-k classes and probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.checks import check_int
from purenn.data import collect_images, load_image, normalize_batch
from purenn.ops import softmax
from purenn.serialization import load_model

# What a model file must hold besides its weights to classify image files.
INFERENCE_KEYS = ("class_names", "image_size", "mean", "std")


def predict(
    model_path: str | Path, paths: list[str | Path], top_k: int = 5, batch_size: int = 64
) -> list[dict]:
    """Top-k classes of every image.

    Every image is decoded (as in training: resized to the model's size, RGB) before the first
    prediction, so an unreadable file is reported before any work.

    Args:
        model_path: a model file (or checkpoint).
        paths: image files and/or folders of images.
        top_k: classes listed per image (capped at the number of classes).
        batch_size: images per forward pass.

    Returns:
        One ``{"file": str, "predictions": [{"class": name, "probability": p}, ...]}`` per image,
        best first.

    Raises:
        ModelFileError: not a purenn model. DataError: missing or unreadable image.
    """
    top_k, batch_size = check_int(top_k, "top_k"), check_int(batch_size, "batch_size")
    model, meta = load_model(model_path, require=INFERENCE_KEYS)
    files = collect_images(paths)
    images = np.stack([load_image(f, meta["image_size"]) for f in files])
    names = meta["class_names"]
    k = min(top_k, len(names))
    results = []
    for start in range(0, len(files), batch_size):
        x = normalize_batch(images[start : start + batch_size], meta["mean"], meta["std"])
        probs = softmax(model.forward(x, training=False).astype(np.float64))
        for f, p in zip(files[start : start + batch_size], probs, strict=True):
            best = np.argsort(-p, kind="stable")[:k]
            results.append(
                {
                    "file": str(f),
                    "predictions": [{"class": names[i], "probability": float(p[i])} for i in best],
                }
            )
    return results


def format_predictions(results: list[dict]) -> str:
    """A plain-text table: each file, then its ranked classes with probabilities."""
    width = max(len(p["class"]) for r in results for p in r["predictions"])
    lines = []
    for r in results:
        lines.append(r["file"])
        for rank, p in enumerate(r["predictions"], 1):
            lines.append(f"  {rank}. {p['class']:<{width}}  {100 * p['probability']:6.2f}%")
    return "\n".join(lines)

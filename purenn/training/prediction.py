"""Predict the classes of image files with a saved model: top-k classes and probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.checks import check_int
from purenn.data import IMAGE_EXTENSIONS, DataError, load_image
from purenn.inference import INFERENCE_KEYS, class_probabilities, top_classes
from purenn.serialization import load_model


def collect_images(paths: list[str | Path]) -> list[Path]:
    """The files given, and the image files inside the folders given (recursively, sorted).

    Raises:
        DataError: a path does not exist, or a folder holds no image file.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"no image files in folder {path}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"image does not exist: {path}")
    return files


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
    results = []
    for start in range(0, len(files), batch_size):
        probs = class_probabilities(model, images[start : start + batch_size], meta)
        for f, p in zip(files[start : start + batch_size], probs, strict=True):
            results.append(
                {"file": str(f), "predictions": top_classes(p, meta["class_names"], top_k)}
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

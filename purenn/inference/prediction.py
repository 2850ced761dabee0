"""Predict the classes of image files with a saved model: top-k classes and probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.checks import check_int
from purenn.data import DataError, collect_images
from purenn.data.decode import try_decode
from purenn.inference.probabilities import INFERENCE_KEYS, top_classes
from purenn.inference.recognition import answer, read_ood_test
from purenn.inference.tta import check_views
from purenn.io import load_model, model_file


def predict(
    model_path: str | Path,
    paths: list[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    skipped: list[tuple[str, str]] | None = None,
    tta: int = 1,
) -> list[dict]:
    """Top-k classes of every image.

    Every image is decoded (as in training: resized to the model's size, RGB) before the first
    prediction, so an unreadable file is reported before any work.

    Args:
        model_path: a model file (or checkpoint), or a run folder (its ``best.npz``).
        paths: image files and/or folders of images.
        top_k: classes listed per image (capped at the number of classes).
        batch_size: images per forward pass.
        skipped: if a list, unreadable files are appended to it as ``(path, reason)`` and left
            out, and the others are predicted; if None (strict), the first one is an error.
        tta: test-time augmentation views (1 to 8, see :mod:`purenn.inference.tta`): the
            mean of the calibrated probabilities over that many flips and turns of each
            image, at ``tta`` forward passes per batch.

    Returns:
        One ``{"file": str, "predictions": [{"class": name, "probability": p}, ...],
        "recognized": bool, "ood_score": float | None}`` per image, best first: ``recognized``
        is False when the image does not look like the leaves the model was trained on (its
        OOD score, higher meaning less like them, is above the model file's threshold); a model
        file without an OOD test recognizes every image and gives ``ood_score`` None.

    Raises:
        ModelFileError: not a purenn model. DataError: missing image, an unreadable one in
        strict mode, or no readable image at all. ValueError: a bad ``top_k``, ``batch_size``
        or ``tta``.
    """
    top_k, batch_size = check_int(top_k, "top_k"), check_int(batch_size, "batch_size")
    tta = check_views(tta)
    path = model_file(model_path)
    model, meta = load_model(path, require=INFERENCE_KEYS)
    ood_test = read_ood_test(path, meta)
    decoded = []
    for path in collect_images(paths):
        image, reason = try_decode(path, meta["image_size"])
        if image is not None:
            decoded.append((path, image))
        elif skipped is None:
            raise DataError(f"cannot read image {path}: {reason}")
        else:
            skipped.append((str(path), reason))
    if not decoded:
        raise DataError(unreadable_message(skipped or []))
    files = [path for path, _ in decoded]
    images = np.stack([image for _, image in decoded])
    results = []
    for start in range(0, len(files), batch_size):
        answers = answer(model, images[start : start + batch_size], meta, ood_test, tta)
        for i, f in enumerate(files[start : start + batch_size]):
            results.append(
                {
                    "file": str(f),
                    "predictions": top_classes(
                        answers.probabilities[i], meta["class_names"], top_k
                    ),
                    **answers.verdict(i),
                }
            )
    return results


def unreadable_message(skipped: list[tuple[str, str]], listed: int = 3) -> str:
    """The one-line error when no image could be read: how many, the first ``listed`` and why."""
    named = "; ".join(f"{path} ({reason})" for path, reason in skipped[:listed])
    more = f"; and {len(skipped) - listed} more" if len(skipped) > listed else ""
    return f"none of the {len(skipped)} image files could be read: {named}{more}"


def format_predictions(results: list[dict]) -> str:
    """A plain-text table: each file, then its ranked classes with probabilities (after a line
    saying so when the photo was not recognized)."""
    width = max(len(p["class"]) for r in results for p in r["predictions"])
    lines = []
    for r in results:
        lines.append(r["file"])
        if not r["recognized"]:
            lines.append(
                f"  NOT RECOGNIZED: this does not look like a leaf this model knows (OOD score "
                f"{r['ood_score']:.3g}); its guesses would be:"
            )
        for rank, p in enumerate(r["predictions"], 1):
            lines.append(f"  {rank}. {p['class']:<{width}}  {100 * p['probability']:6.2f}%")
    return "\n".join(lines)

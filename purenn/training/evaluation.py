"""Evaluate a model on labelled images: metrics, ``report.json`` and ``confusion.png``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from purenn.data import DataError, DataLoader, scan_image_folder
from purenn.inference.calibration import expected_calibration_error, scaled_logits
from purenn.inference.ood import features_and_logits
from purenn.inference.prediction import INFERENCE_KEYS
from purenn.inference.probabilities import model_temperature
from purenn.inference.tta import check_views, tta_logits
from purenn.io import atomic_write, load_model
from purenn.kernels.ops import softmax
from purenn.nn.network import Network
from purenn.nn.sequential import Sequential
from purenn.training.metrics import classification_report
from purenn.training.pipeline import SPLITS, open_cache, split_indices
from purenn.training.plots import plot_confusion

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CONFUSION_FILE = "confusion.png"
# --split: "auto" is the model's test split on the folder it was trained on, else all images.
SPLIT_CHOICES = ("auto", "all", *SPLITS)


def predict_logits(
    model: Sequential,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    temperature: float = 1.0,
    views: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``(x, y)`` batches.

    ``views > 1``: test-time augmentation; each batch's logits are
    :func:`purenn.inference.tta.tta_logits` at ``temperature`` (their softmax at that
    temperature is the mean of the views' calibrated probabilities).

    Returns:
        ``(logits, labels)``: float (N, K) and int64 (N,), concatenated in batch order.
    """
    model.eval()
    outputs, labels = [], []

    def forward(x: np.ndarray) -> np.ndarray:
        return model.forward(x, training=False)

    for x, y in batches:
        outputs.append(tta_logits(forward, x, temperature, views))
        labels.append(y)
    return np.concatenate(outputs), np.concatenate(labels)


def predict_features(
    model: Network, batches: Iterable[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``(x, y)`` batches, keeping the penultimate features.

    Returns:
        ``(features, logits, labels)``: float64 (N, D) inputs of the final Dense layer, its
        (N, K) outputs (the logits, from the same pass) and int64 (N,), in batch order.
    """
    model.eval()
    parts = [(*features_and_logits(model, x, batch_size=len(x)), y) for x, y in batches]
    features, logits, labels = zip(*parts, strict=True)
    return np.concatenate(features), np.concatenate(logits), np.concatenate(labels)


def write_report(folder: str | Path, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``confusion.png`` (from ``report["confusion_matrix"]``)."""
    folder = Path(folder)
    json_path = atomic_write(folder / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    names = [c["name"] for c in report["classes"]]
    png_path = plot_confusion(folder / CONFUSION_FILE, np.array(report["confusion_matrix"]), names)
    return json_path, png_path


def default_eval_dir(model_path: str | Path, data_dir: str | Path, split: str) -> Path:
    """``<model's folder>/eval-<data folder name>[-<split>]``."""
    name = Path(data_dir).resolve().name + ("" if split in ("all", "auto") else f"-{split}")
    return Path(model_path).resolve().parent / f"eval-{name}"


def trained_on(meta: dict, root: Path) -> bool:
    """Whether ``root`` is the data folder the model was trained on (by its resolved path)."""
    saved = meta.get("data_dir")
    return saved is not None and "split" in meta and Path(saved).resolve() == root


def describe_scored(report: dict) -> str:
    """One line: which images were scored, and how they relate to the model's training."""
    split = "all images" if report["split"] == "all" else f"the {report['split']} split"
    line = f"scored {report['samples']} images ({split}) of {report['data_dir']}"
    if report.get("tta", 1) > 1:
        line += f", each the mean of {report['tta']} views"
    overlap = report.get("train_overlap")
    if overlap is None and report.get("trained_on") is None:
        return line + " (the model file does not record the folder it was trained on)"
    if overlap is None:
        return line + f" (not the folder the model was trained on, {report['trained_on']})"
    return line + f" (the model's training folder; {overlap} of them trained on)"


@dataclass(frozen=True)
class ScoredImages:
    """The logits of the labelled images chosen by :func:`score_folder`.

    Attributes:
        logits: float (N, K) raw model outputs (before any temperature), or with test-time
            augmentation the :func:`purenn.inference.tta.tta_logits` at the model's
            temperature; labels: int64 (N,) indices into the model's classes.
        split: the split scored (``"auto"`` resolved); root: the data folder, resolved.
        train_overlap: how many scored images are in the model's training split (None when
            ``root`` is not the folder the model was trained on).
        features: float64 (N, D) penultimate features of the same pass, when asked for.
    """

    logits: np.ndarray
    labels: np.ndarray
    split: str
    root: Path
    train_overlap: int | None
    features: np.ndarray | None = None


def score_folder(
    model: Sequential,
    meta: dict,
    data_dir: str | Path,
    split: str,
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    auto: tuple[str, ...] = ("test", "val"),
    features: bool = False,
    views: int = 1,
) -> ScoredImages:
    """Logits of a model on an image folder, or on one split of it as split during training.

    Args:
        model, meta: as :func:`purenn.io.load_model` returns them.
        data_dir: ``DATA_DIR/<class>/<image>`` (or pre-split); its classes must be among the
            model's (matched by name).
        split: as :func:`evaluate`'s ``split``; ``"auto"`` takes the first non-empty split of
            ``auto`` on the folder the model was trained on, else ``"all"``.
        batch_size, cache_dir, workers, progress: as :func:`evaluate`'s.
        auto: the splits ``"auto"`` prefers, in order.
        features: also keep the penultimate features (:func:`predict_features`) of the
            plain images (the OOD test scores those).
        views: test-time augmentation views (1: none), see :func:`predict_logits`.

    Raises:
        DataError: bad folder, a class unknown to the model, or an empty split.
    """
    scan = scan_image_folder(data_dir)
    same_folder = trained_on(meta, scan.root)
    known = {name: i for i, name in enumerate(meta["class_names"])}
    unknown = [name for name in scan.class_names if name not in known]
    if unknown:
        raise DataError(
            f"class folder {unknown[0]!r} of {scan.root} is not one of the model's "
            f"{len(known)} classes ({', '.join(list(known)[:5])}, ...)"
        )
    if split not in ("all", "auto") and scan.class_names != meta["class_names"]:
        raise DataError(
            f"--split {split} needs the model's classes in {scan.root}, found {scan.class_names}"
        )
    cache = open_cache(scan, meta["image_size"], cache_dir, workers, progress)
    parts = None
    if same_folder or split not in ("all", "auto"):
        s = meta["split"]
        parts = split_indices(cache, s["val_fraction"], s["test_fraction"], s["seed"])
    if split == "auto":
        held_out = [name for name in auto if same_folder and len(parts[name])]
        split = held_out[0] if held_out else "all"
    if split == "all":
        indices = np.arange(len(cache.labels))
    else:
        indices = parts[split]
        if not len(indices):
            raise DataError(f"the {split} split of {scan.root} is empty")
        if not same_folder:
            logger.warning(
                "%s is not the folder the model was trained on (%s): --split %s is a new split "
                "of it with the model's fractions and seed, not images the model held out; "
                "use --split all to score every image of it",
                scan.root,
                meta.get("data_dir", "not recorded in the model file"),
                split,
            )
    overlap = None
    if same_folder:
        overlap = int(np.isin(indices, parts["train"]).sum())
        if overlap and split != "train":
            logger.warning(
                "%d of the %d images scored are in the model's training split of %s: the "
                "scores overstate its accuracy on new images (use --split test)",
                overlap,
                len(indices),
                scan.root,
            )
    labels = np.array([known[name] for name in cache.class_names])[cache.labels]
    loader = DataLoader(cache.images, labels, indices, batch_size, meta["mean"], meta["std"])
    if features:
        f, logits, y = predict_features(model, loader)
        if views > 1:
            logits, _ = predict_logits(model, loader, model_temperature(meta), views)
        return ScoredImages(logits, y, split, scan.root, overlap, f)
    logits, y = predict_logits(model, loader, model_temperature(meta), views)
    return ScoredImages(logits, y, split, scan.root, overlap)


def check_split(split: str, choices: tuple[str, ...] = SPLIT_CHOICES) -> str:
    """``split`` if it is one of ``choices``; ValueError naming it otherwise."""
    if split not in choices:
        raise ValueError(f"split must be one of {', '.join(choices)}, received: {split!r}")
    return split


def evaluate(
    model_path: str | Path,
    data_dir: str | Path,
    split: str = "all",
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    tta: int = 1,
) -> dict:
    """Metrics of a saved model on an image folder.

    Args:
        model_path: a model file (or checkpoint).
        data_dir: ``DATA_DIR/<class>/<image>`` (or pre-split); its classes must be among the
            model's (matched by name).
        split: ``"all"`` images, or the ``"train"``, ``"val"`` or ``"test"`` part as split during
            training (the model stores the fractions and seed; the folder must have the model's
            classes and the same files for this to be the same split), or ``"auto"``: ``"test"``
            on the folder the model was trained on (``"val"`` if it has no test split, then
            ``"all"``), ``"all"`` on any other folder. A split of another folder than the
            model's is a new split of it, and a warning says so; so does a score that includes
            images the model was trained on.
        batch_size: images per forward pass.
        cache_dir: decoded-image cache (default ``~/.cache/purenn``).
        workers: decoding processes.
        progress: show the caching progress bar.
        tta: test-time augmentation: score the mean of the calibrated probabilities over the
            first ``tta`` views of :data:`purenn.inference.tta.VIEWS` (1 to 8; ``tta``
            forward passes per image).

    Returns:
        :func:`classification_report` of the calibrated logits (``logits / temperature``: its
        ``loss`` is the NLL of the probabilities purenn reports) plus ``temperature`` (the model
        file's, 1.0 if it has none), ``ece`` (their expected calibration error), ``model``,
        ``data_dir``, ``split`` (the split scored), ``trained_on`` (the model's training
        folder, None if not recorded) and ``train_overlap`` (how many scored images are in the
        model's training split; None when ``data_dir`` is not the folder the model was trained
        on), ``tta`` (the views averaged).

    Raises:
        ModelFileError: not a purenn model. DataError: bad folder, a class unknown to the model,
        or an empty split. ValueError: bad ``split`` or ``tta``.
    """
    check_split(split)
    tta = check_views(tta)
    model, meta = load_model(
        model_path, require=INFERENCE_KEYS + (() if split in ("all", "auto") else ("split",))
    )
    scored = score_folder(
        model, meta, data_dir, split, batch_size, cache_dir, workers, progress, views=tta
    )
    temperature = model_temperature(meta)
    calibrated = scaled_logits(scored.logits, temperature)
    report = classification_report(calibrated, scored.labels, meta["class_names"])
    return {
        "model": str(Path(model_path).absolute()),
        "data_dir": str(scored.root),
        "split": scored.split,
        "trained_on": meta.get("data_dir"),
        "train_overlap": scored.train_overlap,
        **report,
        "temperature": temperature,
        "ece": expected_calibration_error(softmax(calibrated), scored.labels),
        "tta": tta,
    }

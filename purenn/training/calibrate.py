"""Calibrate a model: its temperature and its out-of-distribution test, fitted on held-out images.

``purenn train`` fits both itself (after restoring the best weights: the temperature on the
validation split, the OOD statistics on the training split with the threshold on the validation
split, :func:`fit_ood`); :func:`calibrate` serves model files written before that, or a
temperature refitted on new images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.data import DataError, DataLoader, ImageCache, scan_image_folder
from purenn.inference.calibration import ECE_BINS, calibration_summary, fit_temperature
from purenn.inference.prediction import INFERENCE_KEYS
from purenn.inference.probabilities import model_temperature
from purenn.inference.recognition import (
    FEATURE_SCORES,
    OOD_KEY,
    OOD_PREFIX,
    OODTest,
    default_score,
    fit_ood_test,
)
from purenn.io import load_model, model_file, update_model_metadata
from purenn.nn.network import Network
from purenn.training.evaluation import (
    check_split,
    predict_features,
    predict_logits,
    score_folder,
)
from purenn.training.pipeline import open_cache, split_indices

# "auto": the model's validation split on the folder it was trained on, all images of another.
CALIBRATE_SPLITS = ("auto", "val", "all")


def split_outputs(
    model: Network,
    cache: ImageCache,
    indices: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    batch_size: int,
    features: bool,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(features or None, logits, labels)`` of ``cache.images[indices]`` (eval mode).

    ``cache``: anything with ``images`` and ``labels`` (as the model's classes): an
    ``ImageCache``, or a run's ``TrainingData``, whose arrays hold a replay run's images too.
    """
    loader = DataLoader(cache.images, cache.labels, indices, batch_size, mean, std)
    if features:
        return predict_features(model, loader)
    return None, *predict_logits(model, loader)


def fit_ood(
    model: Network,
    cache: ImageCache,
    splits: dict[str, np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    score: str,
    batch_size: int = 64,
) -> OODTest:
    """The OOD test of a trained model: statistics of its training split, threshold on val.

    Args:
        model: the trained model (run in eval mode).
        cache: the images it was trained on (labels as the model's classes); ``splits`` their
            ``"train"`` and ``"val"`` indices, as split in training.
        mean, std: the model's normalisation.
        score: one of :data:`purenn.inference.recognition.SCORES` (the training split is
            run only for a score of the features).
        batch_size: images per forward pass.

    Raises:
        DataError: an empty training or validation split.
    """
    for name in ("train", "val"):
        if not len(splits[name]):
            raise DataError(f"the {name} split of {cache.root} is empty: no OOD test to fit")

    needs = score in FEATURE_SCORES
    train_features = train_labels = val_features = None
    if needs:
        train_features, _, train_labels = split_outputs(
            model, cache, splits["train"], mean, std, batch_size, True
        )
    val_features, val_logits, _ = split_outputs(
        model, cache, splits["val"], mean, std, batch_size, needs
    )
    return fit_ood_test(train_features, train_labels, val_features, val_logits, score)


def calibrate(
    model_path: str | Path,
    data_dir: str | Path,
    split: str = "auto",
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    ood_score: str | None = None,
) -> dict:
    """Fit the temperature of a model file on labelled images and store it in the file.

    On the model's validation split (the folder it was trained on) of an ``.npz`` model file,
    its OOD test is fitted too (:func:`fit_ood`, score ``ood_score``, by default
    :func:`purenn.inference.recognition.default_score`) and stored with it,
    replacing any it had; otherwise the file's OOD test is left as it was.

    The images are chosen as :func:`purenn.training.evaluate` chooses them, except that
    ``"auto"`` means the validation split (not the test split) on the folder the model was
    trained on. The file is rewritten atomically with the new ``temperature``; its weights and
    other metadata are unchanged.

    Args:
        model_path: a model file (``.npz`` or ``.safetensors``) or a run folder (its best.npz).
        data_dir: ``DATA_DIR/<class>/<image>``, with classes among the model's.
        split: ``"auto"``, ``"val"`` (the model's validation split, as split in training) or
            ``"all"`` (every image of a folder the model was not trained on).
        batch_size, cache_dir, workers, progress: as for :func:`purenn.training.evaluate`.

    Returns:
        ``{"model", "data_dir", "split", "temperature", "previous_temperature", "bins"}`` plus
        :func:`purenn.inference.calibration.calibration_summary` (``before``: with the file's
        previous temperature, 1.0 if it had none) and ``"ood"``: the OOD test's header entry
        written (None when none was fitted).

    Raises:
        ModelFileError: not a model file (or a checkpoint). DataError: a bad folder, an empty
        split, or images the model was trained on (a temperature fitted on them is too low).
        ValueError: bad ``split``.
    """
    check_split(split, CALIBRATE_SPLITS)
    path = model_file(model_path)
    model, meta = load_model(path, require=INFERENCE_KEYS)
    previous = model_temperature(meta)
    scored = score_folder(
        model, meta, data_dir, split, batch_size, cache_dir, workers, progress, auto=("val",)
    )
    if scored.train_overlap:
        raise DataError(
            f"{scored.train_overlap} of the {len(scored.labels)} images of {scored.root} "
            f"({'all images' if scored.split == 'all' else f'the {scored.split} split'}) are "
            "in the model's training split: a temperature fitted on them would leave it "
            "overconfident; calibrate on its validation split (--split val) or on another "
            "labelled folder"
        )
    temperature = fit_temperature(scored.logits, scored.labels)
    summary = calibration_summary(scored.logits, scored.labels, temperature, before=previous)
    changes, arrays, ood = {"temperature": temperature}, None, None
    scan = scan_image_folder(scored.root)
    own_split = scored.train_overlap is not None and scan.class_names == meta["class_names"]
    if scored.split == "val" and own_split and path.suffix.lower() == ".npz":
        # The model's own training folder: its training split is there to fit the OOD test on.
        cache = open_cache(scan, meta["image_size"], cache_dir, workers, progress)
        s = meta["split"]
        splits = split_indices(cache, s["val_fraction"], s["test_fraction"], s["seed"])
        test = fit_ood(
            model, cache, splits, np.array(meta["mean"]), np.array(meta["std"]),
            ood_score or default_score(meta), batch_size,
        )  # fmt: skip
        ood, arrays = test.to_file()
        changes[OOD_KEY] = ood
    update_model_metadata(path, changes, arrays, prefix=None if ood is None else OOD_PREFIX)
    return {
        "model": str(path.absolute()),
        "data_dir": str(scored.root),
        "split": scored.split,
        "temperature": temperature,
        "previous_temperature": previous,
        "bins": ECE_BINS,
        **summary,
        "ood": ood,
    }


def format_calibration(result: dict) -> str:
    """Two lines: the temperature written, and the NLL and ECE before and after."""
    split = "all images" if result["split"] == "all" else f"the {result['split']} split"
    return (
        f"temperature {result['temperature']:.4g} (was {result['previous_temperature']:.4g}), "
        f"fitted on {result['samples']} images ({split}) of {result['data_dir']}; written to "
        f"{result['model']}\n"
        f"expected calibration error ({result['bins']} bins): "
        f"{100 * result['ece_before']:.2f}% -> {100 * result['ece_after']:.2f}%; "
        f"NLL {result['nll_before']:.4f} -> {result['nll_after']:.4f}"
    ) + _ood_line(result["ood"])


def _ood_line(ood: dict | None) -> str:
    if ood is None:
        return (
            "\nOOD test: not fitted (it needs the model's validation split of the .npz model's "
            "training folder); the file's is unchanged"
        )
    fitted = " fitted on the training split," if ood["score"] in FEATURE_SCORES else ","
    k = f", k={ood['k']}" if "k" in ood else ""
    return (
        f"\nOOD test: {ood['score']}{k}{fitted} threshold {ood['threshold']:.4g} keeping "
        f"{100 * ood['keep']:.0f}% of the validation split"
    )

"""Calibrate an existing model file: fit its temperature on held-out labelled images.

``purenn train`` fits the temperature itself (on the validation split, after restoring the best
weights); this serves model files written before that, or a temperature refitted on new images.
"""

from __future__ import annotations

from pathlib import Path

from purenn.data import DataError
from purenn.inference.calibration import ECE_BINS, calibration_summary, fit_temperature
from purenn.inference.prediction import INFERENCE_KEYS
from purenn.inference.probabilities import model_temperature
from purenn.io import load_model, model_file, update_model_metadata
from purenn.training.evaluation import check_split, score_folder

# "auto": the model's validation split on the folder it was trained on, all images of another.
CALIBRATE_SPLITS = ("auto", "val", "all")


def calibrate(
    model_path: str | Path,
    data_dir: str | Path,
    split: str = "auto",
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Fit the temperature of a model file on labelled images and store it in the file.

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
        previous temperature, 1.0 if it had none).

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
    update_model_metadata(path, {"temperature": temperature})
    return {
        "model": str(path.absolute()),
        "data_dir": str(scored.root),
        "split": scored.split,
        "temperature": temperature,
        "previous_temperature": previous,
        "bins": ECE_BINS,
        **summary,
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
    )

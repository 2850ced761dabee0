"""``purenn evaluate MODEL DATA_DIR --ood DIR``: how the model file's OOD test sorts leaves from
photos that are none of its classes.

The in-distribution images are those :func:`purenn.training.evaluate` scores (the test split on
the model's own folder); the out-of-distribution photos are every image of DIR, grouped by its
top-level folders (:func:`purenn.data.scan_outlier_folder`). Reported per group and over all:
the AUROC of telling them apart by the score, the false-positive rate at 95% of the leaves
accepted, and the share rejected at the model file's threshold; for the leaves, the share
recognized and the accuracy on those against all. A risk-coverage PNG shows the trade-off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.data import DataLoader, scan_outlier_folder
from purenn.inference.ood import auroc, fpr_at_tpr
from purenn.inference.prediction import INFERENCE_KEYS
from purenn.inference.recognition import OODTest, read_ood_test
from purenn.io import ModelFileError, load_model, model_file
from purenn.training.evaluation import predict_features, score_folder
from purenn.training.metrics import recognition_summary
from purenn.training.pipeline import open_cache
from purenn.training.plots import plot_risk_coverage

RISK_COVERAGE_FILE = "risk_coverage.png"
# The in-distribution share accepted at which the false-positive rate is read.
TPR = 0.95


def _separation(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict:
    return {
        "samples": int(len(out_scores)),
        "auroc": auroc(in_scores, out_scores),
        "fpr_at_95": fpr_at_tpr(in_scores, out_scores, TPR),
        "rejected": float(np.mean(out_scores > threshold)),
    }


def require_ood_test(path: Path, meta: dict) -> OODTest:
    """The OOD test of a loaded model file; ModelFileError saying how to fit one if it has none."""
    test = read_ood_test(path, meta)
    if test is None:
        raise ModelFileError(
            f"{path} has no OOD test (written before purenn fitted one): fit it with "
            f"purenn calibrate {path} DATA_DIR (the folder it was trained on)"
        )
    return test


def evaluate_ood(
    model_path: str | Path,
    data_dir: str | Path,
    ood_dir: str | Path,
    out: str | Path,
    split: str = "auto",
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Measure the model file's OOD test; write ``out/risk_coverage.png``.

    Args:
        model_path: a model file with an OOD test (or its run folder).
        data_dir, split: the labelled leaves, chosen as :func:`purenn.training.evaluate` does.
        ood_dir: photos that are none of the model's classes (``DIR/<group>/<image>`` and/or
            images directly in DIR).
        out: the folder of the PNG.
        batch_size, cache_dir, workers, progress: as for :func:`purenn.training.evaluate`.

    Returns:
        ``{"ood_dir", "score", "threshold", "leaves": recognition_summary, "folders": {group:
        {"samples", "auroc", "fpr_at_95", "rejected"}}, "all": {...}, "risk_coverage": path}``
        (a group of images directly in DIR is named after DIR).

    Raises:
        ModelFileError: the model file has no OOD test. DataError: bad folders.
    """
    path = model_file(model_path)
    model, meta = load_model(path, require=INFERENCE_KEYS)
    test = require_ood_test(path, meta)
    scan = scan_outlier_folder(ood_dir)
    scored = score_folder(
        model, meta, data_dir, split, batch_size, cache_dir, workers, progress,
        features=test.needs_features,
    )  # fmt: skip
    in_scores = test.scores(scored.features, scored.logits)
    wrong = scored.logits.argmax(axis=1) != scored.labels
    cache = open_cache(scan, meta["image_size"], cache_dir, workers, progress)
    indices = np.arange(len(cache))
    loader = DataLoader(cache.images, cache.labels, indices, batch_size, meta["mean"], meta["std"])
    features, logits, groups = predict_features(model, loader)
    out_scores = test.scores(features if test.needs_features else None, logits)
    folders = {
        scan.root.name if name == "." else name: _separation(
            in_scores, out_scores[groups == g], test.threshold
        )
        for g, name in enumerate(cache.class_names)
    }
    leaves = recognition_summary(in_scores, test.threshold, ~wrong)
    pooled = (np.r_[wrong, np.ones(len(out_scores), bool)], np.r_[in_scores, out_scores])
    accepted = pooled[1] <= test.threshold
    png = plot_risk_coverage(
        Path(out) / RISK_COVERAGE_FILE,
        {"leaves": (wrong, in_scores), "leaves + OOD photos (each accepted one wrong)": pooled},
        {
            "leaves": (leaves["recognized"], 1 - (leaves["accuracy_recognized"] or 1.0)),
            "leaves + OOD photos (each accepted one wrong)": (
                float(accepted.mean()),
                float(pooled[0][accepted].mean()) if accepted.any() else 0.0,
            ),
        },
        test.score,
    )
    return {
        "ood_dir": str(scan.root),
        "score": test.score,
        "threshold": test.threshold,
        "leaves": leaves,
        "folders": folders,
        "all": _separation(in_scores, out_scores, test.threshold),
        "risk_coverage": str(png),
    }


def format_ood(result: dict) -> str:
    """Lines: the leaves recognized, then per OOD folder its AUROC, FPR and share rejected."""
    leaves = result["leaves"]
    kept = leaves["accuracy_recognized"]
    lines = [
        f"OOD test ({result['score']}, threshold {result['threshold']:.4g}): "
        f"{100 * leaves['recognized']:.1f}% of {leaves['samples']} leaves recognized, accuracy "
        + ("n/a" if kept is None else f"{100 * kept:.2f}%")
        + f" on those ({100 * leaves['accuracy']:.2f}% on all)"
    ]
    for name, f in [*result["folders"].items(), ("all OOD photos", result["all"])]:
        lines.append(
            f"  {name} ({f['samples']} photos): AUROC {f['auroc']:.4f}, FPR at 95% of the "
            f"leaves accepted {100 * f['fpr_at_95']:.1f}%, "
            f"not recognized {100 * f['rejected']:.1f}%"
        )
    lines.append(f"risk-coverage: {result['risk_coverage']}")
    return "\n".join(lines)
